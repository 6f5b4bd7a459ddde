"""`POST /api/remove`: the route of rembg's HTTP server (`rembg s`), served by maskflow's pipeline.

A script written for `rembg s` switches by changing one URL.  This is not a second engine: the
image is uploaded into input/ like any other (so it is durable, counted in metrics and batches,
and bounded by the same limits), a worker serves it, and the answer is the result's bytes once
the task is done, at most `task.timeout` later.

rembg 2.0.86's fields (multipart; `bgc` also in the query, where rembg reads it): `file`,
`model` (`u2net`, the default here, or `u2netp`), `a` alpha matting with `af`, `ab`, `ae`,
`om` only the mask, `ppm` post-processed mask, `dc` decontaminated edges (ignored with `a`, as
rembg does), `bgc` "R,G,B,A" with A = 255.  `vm`, `extras` and rembg's other models are a 400
in rembg's own error shape, `{"detail": "..."}`.  `GET /api/remove?url=` is left out: it would
make the API fetch whatever a client names.
"""
from __future__ import annotations

import threading

import falcon

from maskflow.api.deps import Deps
from maskflow.api.errors import ApiError, bad_request
from maskflow.api.uploads import MULTIPART_SLACK, image_format, read_form, store, upload_metadata
from maskflow.infra.domain import options

# rembg's model names -> the catalogue's, where maskflow serves the same model
MODELS = {"u2net": "u2net", "u2netp": "general"}
DEFAULT_MODEL = "u2net"  # rembg 2.0.86 defaults to bria-rmbg, which maskflow does not ship
FIELDS = ("model", "a", "af", "ab", "ae", "om", "ppm", "dc", "vm", "bgc", "extras")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _flag(texts: dict[str, str], name: str) -> bool:
    text = texts.get(name, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise bad_request(f"{name}: expected a boolean, got {text[:40]!r}")


def rembg_options(texts: dict[str, str]) -> tuple[str, dict[str, str], bool]:
    """(model, maskflow option texts, only the mask?) for rembg's fields, or a 400 saying why."""
    model = texts.get("model", DEFAULT_MODEL).strip() or DEFAULT_MODEL
    if model not in MODELS:
        raise bad_request(f"model {model[:40]!r} is not served here; models: {', '.join(MODELS)}")
    if _flag(texts, "vm"):
        raise bad_request("vm (ViTMatte) is not supported here; use a=true for alpha matting")
    if texts.get("extras", "").strip():
        raise bad_request("extras are not supported here")
    chosen: dict[str, str] = {}
    if _flag(texts, "a"):
        chosen["refine"] = "matting"
        for field, option in (("af", "matting_foreground"), ("ab", "matting_background"), ("ae", "matting_erode")):
            if field in texts:
                chosen[option] = texts[field]
    elif _flag(texts, "dc"):
        chosen["refine"] = "decontaminate"
    else:
        chosen["premultiplied"] = "true"  # rembg's plain cut-out: colours times alpha
    if _flag(texts, "ppm"):
        chosen["post_process"] = "true"
    if texts.get("bgc"):
        chosen["background"] = _colour(texts["bgc"])
    return MODELS[model], chosen, _flag(texts, "om")


def _colour(bgc: str) -> str:
    parts = bgc.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        raise bad_request(f"bgc: expected R,G,B,A from 0 to 255, got {bgc[:40]!r}")
    r, g, b, a = (int(p) for p in parts)
    if a != 255:
        raise bad_request("bgc: only an opaque background (A = 255) is supported here")
    return f"#{r:02x}{g:02x}{b:02x}"


class RembgResource:
    """POST /api/remove: rembg's fields in, the cut-out (or with om, the mask) PNG out."""

    def __init__(self, deps: Deps):
        self.deps = deps
        self.limit = deps.cfg.task.max_upload_bytes
        self.max_body_bytes = self.limit + MULTIPART_SLACK  # enforced by api.middleware.BodyLimit
        # Each request holds a waitress thread until its task is done: at most half of them.
        self.slots = threading.BoundedSemaphore(max(1, deps.cfg.api.threads // 2))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self._remove(req, resp)
        except falcon.HTTPError as exc:  # ours or Falcon's (a malformed form): rembg's own
            resp.status = exc.status      # error shape, for the scripts that parse it
            resp.media = {"detail": exc.description or exc.title}
            resp.set_headers(exc.headers or {})

    def _remove(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, texts = read_form(req, self.limit, FIELDS)
        if "bgc" not in texts and req.get_param("bgc"):
            texts["bgc"] = req.get_param("bgc")
        model, chosen, only_mask = rembg_options(texts)
        metadata = upload_metadata(model, chosen)  # also checks af, ab and ae
        fmt = image_format(data, self.deps.cfg.task.max_pixels)
        if not self.slots.acquire(blocking=False):
            raise ApiError(503, "busy", "every slot for /api/remove is busy; retry shortly",
                           headers={"Retry-After": "2"})
        try:
            task = store(self.deps, data, fmt, metadata)
            done = self.deps.tasks.wait_for_terminal(task.task_id, self.deps.cfg.task.timeout)
        finally:
            self.slots.release()
        if done is None or not done.terminal:
            raise ApiError(504, "timeout", f"task {task.task_id} was not done within "
                                           f"{self.deps.cfg.task.timeout} s")
        if done.status == "failed":
            raise ApiError(500, "failed", f"task {task.task_id} failed: {done.error}")
        resp.content_type = "image/png"
        resp.data = self.deps.objects.get(done.results["mask" if only_mask else "output"]).data


_BYTE = "(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})"
_ERRORS = (("400", "A field or model not supported here, or a bad value"),
           ("415", "Not a supported image format"),
           ("422", "A supported format, but empty, corrupt or too large"),
           ("500", "The task failed"), ("503", "Every slot busy"), ("504", "Not done within task.timeout"))


def openapi_operation(limit: int, unauthorized: dict) -> dict:
    """This route in the OpenAPI document (api/openapi.py): rembg's fields and error shape."""
    flags = {flag: {"type": "string", "enum": ["true", "false"]} for flag in ("a", "om", "ppm", "dc")}
    fields = {"file": {"type": "string", "minLength": 1, "contentMediaType": "application/octet-stream"},
              "model": {"type": "string", "enum": sorted(MODELS),
                        "description": f"rembg's name; {DEFAULT_MODEL} when absent"},
              **flags, "af": options.SCHEMAS["matting_foreground"],
              "ab": options.SCHEMAS["matting_background"], "ae": options.SCHEMAS["matting_erode"]}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/RembgError"}}}
    return {
        "operationId": "rembgRemove",
        "summary": "rembg's `POST /api/remove` (rembg s), on this pipeline: the result's bytes",
        "parameters": [{"name": "bgc", "in": "query", "required": False,
                        "schema": {"type": "string", "pattern": rf"^({_BYTE},){{3}}255$"},
                        "description": "Background R,G,B,A (A = 255), where rembg reads it"}],
        "requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "additionalProperties": False,
                       "properties": fields}}}},
        "responses": {
            "200": {"description": "The cut-out (with om, the mask) as PNG",
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
            **{code: {"description": what, "content": error}
               for code, what in (*_ERRORS, ("413", f"File larger than {limit} bytes"))},
            "401": unauthorized}}
