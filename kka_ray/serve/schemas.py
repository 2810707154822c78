"""Request and response bodies; pydantic bounds make a bad request a 422 naming the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AnomalyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    normal_descriptions: list[str] | None = Field(None, min_length=1, description="Style examples (x_n^t)")
    dataset: str | None = Field(None, description="Or a registered dataset + normal_class")
    normal_class: str | None = None
    domain: str | None = Field(None, description="What the data show; default: the dataset's, else 'objects'")
    count: int = Field(8, ge=1, description="Anomalies wanted")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    iteration: int | None = Field(None, ge=0, description="KKA iteration whose model writes: 0 = base model, t = "
                                  "after t DPO rounds of the served run; None = the run's last")
    return_images: bool = True

    @model_validator(mode="after")
    def _one_source(self):
        if (self.normal_descriptions is None) == (self.dataset is None):
            raise ValueError("give either normal_descriptions or dataset + normal_class")
        if self.dataset is not None and not self.normal_class:
            raise ValueError("normal_class is required with dataset")
        return self


class Provenance(BaseModel):
    normal_description: str
    prompt: str
    seed: int
    model: str
    adapter: str
    iteration: int
    renderer: str | None = None
    render_seed: int | None = None


class Anomaly(BaseModel):
    description: str
    image_png_base64: str | None = None
    distance: float | None = None
    hard: bool | None = None
    provenance: Provenance


class AnomalyResponse(BaseModel):
    anomalies: list[Anomaly]
    requested: int
    rejected_lines: int
    boundary: float | None = Field(None, description="The evaluator's normal boundary (Eq. 6)")
    seconds: float


class ModelsResponse(BaseModel):
    language_model: str
    backend: str
    adapters: dict[int, str]
    renderer: str
    evaluator: str | None
    run: str | None
    image_size: int
    channels: int
