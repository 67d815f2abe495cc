"""Base for validated configuration models and the conversion of their errors to ConfigError."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from daq.errors import ConfigError


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields.

    Every configuration model in the project derives from this; every field carries bounds
    and a docstring (`Field(description=...)`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        """Validate `data`; raise ConfigError naming the first bad field, value and bound."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise config_error(e) from None

    def content_hash(self) -> str:
        """sha256 (hex, first 16 characters) of the canonical JSON of this model."""
        return content_hash(self.model_dump(mode="json"))


def content_hash(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order and whitespace."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_error(e: ValidationError) -> ConfigError:
    """The first error of a pydantic ValidationError as a ConfigError."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return ConfigError(loc, err.get("input"), err["msg"])
