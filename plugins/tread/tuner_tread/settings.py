"""The ``[tread]`` config section: the guide's ``tread_config``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["TreadRoute", "TreadConfig", "TreadSection"]


class TreadRoute(BaseModel):
    """One route: a share of the latent tokens skips blocks ``start_layer_idx..end_layer_idx``."""

    model_config = ConfigDict(extra="forbid")

    selection_ratio: float = Field(
        ...,
        ge=0.0,
        lt=1.0,
        description="Share of each sample's latent tokens that SKIP this route's blocks (0.25: a random quarter"
        " jumps from before start_layer_idx to after end_layer_idx, three quarters run through). 0 routes nothing.",
    )
    start_layer_idx: int = Field(
        ..., description="First block the route covers, counted from 0; negative counts from the end (-1 = last)."
    )
    end_layer_idx: int = Field(
        ..., description="Last block the route covers (inclusive); negative counts from the end (-2 = second to last)."
    )

    @model_validator(mode="after")
    def _start_before_end(self) -> TreadRoute:
        # Indices of the same sign compare without knowing the depth; mixed signs are checked at start-up.
        s, e = self.start_layer_idx, self.end_layer_idx
        if (s < 0) == (e < 0) and s > e:
            raise ValueError(f"start_layer_idx {s} comes after end_layer_idx {e}")
        return self


class TreadConfig(BaseModel):
    """The routes, in block order."""

    model_config = ConfigDict(extra="forbid")

    routes: list[TreadRoute] = Field(
        default_factory=list, description="Routes in block order; their block spans must not overlap."
    )

    @model_validator(mode="after")
    def _in_order(self) -> TreadConfig:
        for i in range(1, len(self.routes)):
            prev, cur = self.routes[i - 1], self.routes[i]
            if (prev.end_layer_idx < 0) == (cur.start_layer_idx < 0) and cur.start_layer_idx <= prev.end_layer_idx:
                raise ValueError(
                    f"routes[{i}] starts at block {cur.start_layer_idx}, not after routes[{i - 1}]'s last block"
                    f" {prev.end_layer_idx}: routes must be in block order and must not overlap"
                )
        return self


class TreadSection(BaseModel):
    """TREAD token routing (training only): random latent tokens skip spans of transformer blocks."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    tread_config: TreadConfig | Path | None = Field(
        None,
        description="Token routing: {routes = [{selection_ratio, start_layer_idx, end_layer_idx}, ...]}, or the path"
        " of a JSON file holding that object (or {\"tread_config\": {...}}, as the guide writes it). Each route"
        " lets a random selection_ratio share of the latent tokens skip blocks start..end (inclusive; negative"
        " indices count from the last block). Unset or no routes: off. See docs/tread.md.",
    )

    @field_validator("tread_config")
    @classmethod
    def _routes_file(cls, value: TreadConfig | Path | None) -> TreadConfig | Path | None:
        # A relative path is read once the core resolves it (the section is validated again on that assignment).
        if not isinstance(value, Path) or not value.is_absolute():
            return value
        from tuner.jsonfile import read_json

        data = read_json(value)
        if isinstance(data, dict) and set(data) == {"tread_config"}:
            data = data["tread_config"]  # the guide's snippet, saved as it is
        try:
            return TreadConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{value}: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}")
