"""KKA's stages, in the order of Algorithm 1: select, generate, render, evaluate, prefer, update."""
