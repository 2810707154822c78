"""The Serve application: a FastAPI ingress over the Describer, Renderer and (optional) Evaluator deployments.

    serve run kka_ray.serve.app:build config=configs/serve/default.yaml      # or: python jobs/serve.py
Endpoints: POST /v1/anomalies, GET /v1/models, GET /v1/datasets, GET /healthz, and a page at GET / that calls
them. By default (auth.mode=token) every route but /healthz and the page (which carries no data), /docs and
/openapi.json included, needs `Authorization: Bearer <token>` (401 otherwise); see guard.py.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime to tell the
# request body from query parameters.
import base64
import io
import time
from importlib import resources

import numpy as np
import yaml
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from kka_ray.config import load_config
from kka_ray.serve.config import ServeConfig
from kka_ray.serve.deployments import BASE, Describer, Evaluator, Renderer, llm_deployment
from kka_ray.serve.guard import Guard, Policy, token_digest
from kka_ray.serve.schemas import Anomaly, AnomalyRequest, AnomalyResponse, ModelsResponse, Provenance

api = FastAPI(title="kka-ray: on-demand anomaly generation", version="1")
PAGE = resources.files("kka_ray.serve").joinpath("page.html").read_text()
api.add_middleware(Guard)


def field_error(field: str, msg: str, value) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", field], "msg": msg, "input": value}])


def png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, describer: DeploymentHandle, renderer: DeploymentHandle,
                 evaluator: DeploymentHandle | None, info: dict, cfg: dict, digest: str | None):
        self.describer, self.renderer, self.evaluator = describer, renderer, evaluator
        self.info, self.cfg = info, ServeConfig(**cfg)
        Guard.install(Policy(digest, self.cfg.limits.max_body_bytes))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return PAGE

    @api.get("/v1/datasets")
    async def datasets(self) -> dict[str, list[str]]:
        """Registered datasets with a fixed class list, and their classes (the page's choices)."""
        from kka_ray.data import DATASETS

        return {name: list(DATASETS.get(name).names) for name in DATASETS.names()
                if isinstance(getattr(DATASETS.get(name), "names", None), tuple)}

    @api.get("/v1/models", response_model=ModelsResponse)
    async def models(self) -> ModelsResponse:
        return ModelsResponse(**self.info["models"])

    @api.post("/v1/anomalies", response_model=AnomalyResponse)
    async def anomalies(self, req: AnomalyRequest) -> AnomalyResponse:
        start = time.time()
        job = self.job(req)
        described = await self.describer.options(multiplexed_model_id=job["adapter"] or BASE).describe.remote(job)
        lines = described["lines"]
        rendered = scored = None
        if lines and (req.return_images or self.evaluator is not None):
            rendered = await self.renderer.render.remote({"sentences": [x["sentence"] for x in lines],
                                                          "seeds": [x["seed"] for x in lines]})
            if self.evaluator is not None:
                scored = await self.evaluator.score.remote(rendered["images"])
        models = self.info["models"]
        out = []
        for k, x in enumerate(lines):
            prov = Provenance(normal_description=x["normal_description"], prompt=x["prompt"], seed=x["seed"],
                              model=models["language_model"], adapter=job["adapter"], iteration=job["iteration"],
                              renderer=models["renderer"] if rendered else None,
                              render_seed=int(rendered["render_seeds"][k]) if rendered else None)
            out.append(Anomaly(
                description=x["sentence"], provenance=prov,
                image_png_base64=png_base64(rendered["images"][k]) if rendered and req.return_images else None,
                distance=float(scored["distance"][k]) if scored else None,
                hard=bool(scored["hard"][k]) if scored else None))
        return AnomalyResponse(anomalies=out, requested=req.count, rejected_lines=described["rejected"],
                               boundary=scored["boundary"] if scored else None, seconds=time.time() - start)

    def job(self, req: AnomalyRequest) -> dict:
        """The request checked against the configured limits and resolved to what the Describer needs."""
        lim = self.cfg.limits
        if req.count > lim.max_count:
            raise field_error("count", f"at most {lim.max_count} anomalies per request", req.count)
        adapters = {int(k): v for k, v in self.info["adapters"].items()}
        iteration = max(adapters) if req.iteration is None else req.iteration
        if iteration not in adapters:
            raise field_error("iteration", f"served iterations: {sorted(adapters)}", req.iteration)
        if req.dataset is not None:
            descriptions, domain, names = self.dataset_side(req)
        else:
            descriptions, domain, names = req.normal_descriptions, "objects", ()
            if len(descriptions) > lim.max_descriptions:
                raise field_error("normal_descriptions", f"at most {lim.max_descriptions}", len(descriptions))
            for d in descriptions:
                if not d.strip() or len(d) > lim.max_text_chars:
                    raise field_error("normal_descriptions", f"each must be 1-{lim.max_text_chars} characters", d)
        if req.domain is not None:
            if not req.domain.strip() or len(req.domain) > lim.max_text_chars:
                raise field_error("domain", f"must be 1-{lim.max_text_chars} characters", req.domain)
            domain = req.domain
        return {"descriptions": list(descriptions), "domain": domain, "normal_names": tuple(names),
                "count": req.count, "seed": req.seed, "adapter": adapters[iteration], "iteration": iteration}

    def dataset_side(self, req: AnomalyRequest) -> tuple[list[str], str, tuple[str, ...]]:
        from kka_ray.data import DATASETS

        if req.dataset not in DATASETS.names():
            raise field_error("dataset", f"known datasets: {', '.join(DATASETS.names())}", req.dataset)
        cls = DATASETS.get(req.dataset)
        name = req.normal_class.strip()
        known = getattr(cls, "names", None)  # datasets with a fixed class list check the name against it
        if not name or len(name) > self.cfg.limits.max_text_chars or (isinstance(known, tuple) and name not in known):
            raise field_error("normal_class", f"classes of {req.dataset}: {', '.join(known or ())}",
                              req.normal_class)
        return list(cls().describe(name)), cls.domain, (name,)


def run_info(cfg: ServeConfig) -> tuple[ServeConfig, dict, str | None, float | None]:
    """What a KKA run folder serves: its generation settings, adapters per iteration, last evaluator and
    task image size. Without a run: the configured model, iteration 0 only, no evaluator."""
    from kka_ray.loop import STATE, KKAConfig
    from kka_ray.store import RunStore

    adapters, evaluator, boundary = {0: ""}, None, None
    if cfg.run:
        store = RunStore(cfg.run)
        if not store.exists(STATE):
            raise FileNotFoundError(f"serve run={cfg.run}: not a KKA run folder with a completed iteration "
                                    f"(no {STATE})")
        run_cfg = KKAConfig.model_validate(yaml.safe_load(store.read_text("config.yaml")))
        state = store.read_state(STATE)
        rows = state["rows"]
        for r in rows:
            if "next_adapter" in r:
                adapters[r["iteration"] + 1] = store.uri(r["next_adapter"]) if r["next_adapter"] else ""
        last = state["completed"]
        evaluator, boundary = store.path(f"iter_{last}/evaluator"), float(rows[-1]["evaluator_boundary"])
        shape = store.read_table(f"iter_{last}/anomalies.parquet").column("image").type.shape
        knobs = {k: getattr(cfg.generate.lm, k) for k in ("batch_size", "cpus_per_actor", "gpus_per_actor")}
        lm = run_cfg.generate.lm.model_copy(update=knobs)
        cfg = cfg.model_copy(update={"generate": run_cfg.generate.model_copy(update={"lm": lm}),
                                     "image_size": int(shape[0]), "channels": int(shape[2])})
    return cfg, adapters, evaluator, boundary


def build_app(cfg: ServeConfig):
    """The bound application graph; replica resources follow the LM / render configs (a Serve config file can
    override them and add autoscaling per deployment)."""
    from kka_ray.llm import LM_BACKENDS
    from kka_ray.render import RENDERERS

    cfg, adapters, evaluator_dir, boundary = run_info(cfg)
    lm, render = cfg.generate.lm, cfg.render
    models = {"language_model": LM_BACKENDS.get(lm.backend)(lm).model_id(), "backend": lm.backend,
              "adapters": adapters, "renderer": RENDERERS.get(render.backend)(render).model_id(),
              "evaluator": evaluator_dir, "run": cfg.run, "image_size": cfg.image_size, "channels": cfg.channels}
    batch = {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s}
    ongoing = 2 * cfg.max_batch_size  # a replica must hold a full batch in flight plus the next one forming
    # vllm: the engine is Ray Serve's LLM deployment and the Describer only builds prompts and cleans lines
    llm, lora_names = llm_deployment(lm, adapters) if lm.backend == "vllm" else (None, {})
    own = {"num_cpus": lm.cpus_per_actor, "num_gpus": lm.gpus_per_actor} if llm is None else {"num_cpus": 0.25}
    describer = Describer.options(
        ray_actor_options=own, num_replicas=lm.actors if llm is None else 1, max_ongoing_requests=ongoing,
    ).bind(cfg.generate.model_dump(), max_rounds=cfg.limits.max_rounds, llm=llm, lora_names=lora_names, **batch)
    renderer = Renderer.options(
        ray_actor_options={"num_cpus": render.cpus_per_actor, "num_gpus": render.gpus_per_actor},
        num_replicas=render.actors, max_ongoing_requests=ongoing,
    ).bind(render.model_dump(), cfg.image_size, cfg.channels, **batch)
    evaluator = (Evaluator.options(ray_actor_options={"num_cpus": 0.25}).bind(evaluator_dir, boundary)
                 if evaluator_dir else None)
    digest = token_digest(cfg.auth, cfg.host)  # before any replica starts: a service never starts open by mistake
    # The ingress only routes: it asks for no CPU, so the model replicas may take the node's CPUs. Requests
    # beyond those in flight wait in a bounded queue; more are refused with Retry-After.
    lim = cfg.limits
    ingress = Ingress.options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=lim.max_ongoing_requests,
        max_queued_requests=lim.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=lim.backpressure_status, retry_after_s=lim.retry_after_s))
    return ingress.bind(describer, renderer, evaluator, {"adapters": adapters, "models": models},
                        cfg.model_dump(mode="json"), digest)


def http_options(cfg: ServeConfig) -> dict:
    """serve.start's HTTP options for this config (a Serve config file sets the same under http_options)."""
    return {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.limits.request_timeout_s}


def build(args: dict):
    """Application builder for `serve run` / Serve config files: args `config` (YAML path), `overrides`."""
    return build_app(load_config(ServeConfig, args.get("config"), list(args.get("overrides", []))))
