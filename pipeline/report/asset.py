"""An image file of the report, shared by the page builder (`document`) and its blocks (`pointmap`)."""

from __future__ import annotations

import base64
import dataclasses

ASSET_DIR = "assets"


@dataclasses.dataclass(frozen=True)
class Asset:
    """An image file of the report. `name` is its path relative to the report (``assets/x.png``)."""

    name: str
    data: bytes = dataclasses.field(repr=False)

    @property
    def mime(self) -> str:
        ext = self.name.rsplit(".", 1)[-1].lower()
        return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                "gif": "image/gif", "webp": "image/webp"}.get(ext, "application/octet-stream")

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"
