"""Words that restate a Fashion-MNIST or MNIST class: a generated line using one describes a normal sample.

Matching (kka_ray.text.clean) is whole-word and case-insensitive, treats "-", " " and no separator alike inside a
term ("t-shirt" = "t shirt" = "tshirt") and accepts an -s/-es plural, so spelling variants need no entries here.
A word belongs here only when the dataset files it under the class (Fashion-MNIST's coat class is mostly jackets;
its pullover class holds sweatshirts and hoodies). Words that name a broader or a neighbouring category are left
out ("top" alone is mostly "on top of" or "top hat"; "shoe" may be a sandal or a sneaker; "shorts" are not trousers).
"""

from __future__ import annotations

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

FASHION_MNIST: dict[str, tuple[str, ...]] = {
    "t-shirt": ("tee", "tee shirt", "tank top", "crop top"),
    "trouser": ("pants", "slacks", "jeans", "chinos", "leggings", "joggers", "sweatpants"),
    "pullover": ("sweater", "jumper", "sweatshirt", "hoodie"),
    "dress": ("gown", "frock", "sundress"),
    "coat": ("overcoat", "raincoat", "jacket", "parka", "anorak", "windbreaker"),
    "sandal": ("flip-flop",),
    # "dress shirt" also keeps a dress shirt from counting as a dress when "dress" is the normal class.
    "shirt": ("blouse", "button-down", "button-up", "dress shirt"),
    "sneaker": ("trainer", "running shoe", "tennis shoe", "athletic shoe", "plimsoll"),
    "bag": ("handbag", "purse", "backpack", "rucksack", "tote", "satchel", "briefcase"),
    # The class holds boots of every height, so a plain "boot" renders as a normal sample.
    "ankle boot": ("boot", "bootie"),
}

# The class name is the word; the numeral restates it too ("a handwritten 7").
MNIST: dict[str, tuple[str, ...]] = {name: (str(d),) for d, name in enumerate(_DIGITS)}

SYNONYMS: dict[str, tuple[str, ...]] = {**FASHION_MNIST, **MNIST}
