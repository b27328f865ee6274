"""Images in API requests: data URLs, confined local files, opt-in remote URLs — with limits.

- ``data:image/<type>;base64,<data>``: always accepted (the normal way to send an image);
- a local path or ``file://`` URL: only with ``--allow-local-files DIR``, and only for files whose
  resolved path (symlinks followed) lies inside ``DIR``;
- ``http(s)://``: refused unless ``--allow-remote-images`` (no server-side fetching, so no SSRF by
  default); when allowed: timeout, redirect and size limits, and every hop (redirects included)
  must resolve to public addresses only — loopback, private, link-local (cloud metadata) and
  reserved addresses are refused unless ``--allow-private-image-hosts``.

Every image is checked against ``max_pixels`` from its header *before* it is decoded, so a
decompression bomb costs nothing — and so is the square it becomes in ``pad`` mode (longer side
squared): a 100-byte 20000x1 PNG would otherwise cost a 20000x20000 canvas. A remote fetch has
one deadline for the whole transfer (a trickling host cannot hold a request longer). Problems raise :class:`~llavakit.serve.schema.ApiError` (400)
naming the request field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from llavakit.errors import DataError
from llavakit.imaging import check_size, to_rgb
from llavakit.serve.schema import ImagePart, bad

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


@dataclass
class ImagePolicy:
    max_pixels: int = 4096 * 4096
    max_bytes: int = 16 * 1024 * 1024  # per image (remote and local files; data URLs are capped by the body limit)
    local_root: Path | None = None  # --allow-local-files DIR
    allow_remote: bool = False  # --allow-remote-images
    allow_private_hosts: bool = False  # --allow-private-image-hosts: remote URLs may reach loopback/private nets
    max_redirects: int = 3
    remote_timeout: float = 10.0


def decode_image(data: bytes, param: str, max_pixels: int, pad: bool = True) -> Image.Image:
    """Bytes → RGB image, refusing non-images and images over ``max_pixels`` before decoding (with
    ``pad``: also the square the model pads it to)."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise bad(f"{param}: the image is far larger than {max_pixels} pixels", param, "image_too_large") from None
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise bad(f"{param}: the data is not an image that can be decoded ({exc})", param, "invalid_image") from None
    try:  # the rule of every other path (chat, infer, training)
        check_size(*img.size, param, max_pixels, canvas=pad)
    except DataError as exc:
        raise bad(str(exc), param, "image_too_large") from None
    try:
        img.load()
        return to_rgb(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise bad(f"{param}: the image data is corrupt ({exc})", param, "invalid_image") from None


def _from_data_url(url: str, param: str) -> bytes:
    match = _DATA_URL.match(url)
    if not match:
        raise bad(f"{param}: malformed data URL (expected data:image/<type>;base64,<data>)", param, "invalid_image_url")
    if not match["mime"].startswith("image/"):
        raise bad(f"{param}: the data URL's media type is {match['mime']!r}, not image/*", param, "invalid_image_url")
    if "base64" not in [p.strip() for p in match["params"].split(";")]:
        raise bad(f"{param}: the data URL must be base64-encoded (data:image/<type>;base64,...)", param,
                  "invalid_image_url")
    try:
        return base64.b64decode(re.sub(r"\s+", "", match["data"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"{param}: invalid base64 in the data URL ({exc})", param, "invalid_base64") from None


def _from_file(url: str, param: str, policy: ImagePolicy) -> bytes:
    if policy.local_root is None:
        raise bad(f"{param}: local file images are disabled; send a data: URL, or start the server with "
                  "--allow-local-files DIR", param, "local_files_disabled")
    raw = unquote(urlparse(url).path) if url.startswith("file://") else url
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    root = policy.local_root.resolve()
    try:
        path = (root / raw).resolve()
        if not path.is_relative_to(root):
            raise bad(f"{param}: {shown} is outside the directory this server may read ({root})", param,
                      "local_file_forbidden")
        if not path.is_file():
            raise bad(f"{param}: {shown} does not exist under {root}", param, "local_file_not_found")
        if path.stat().st_size > policy.max_bytes:
            raise bad(f"{param}: {shown} is larger than {policy.max_bytes} bytes", param, "image_too_large")
        return path.read_bytes()
    except (OSError, ValueError) as exc:  # NUL bytes, over-long names, unreadable files
        raise bad(f"{param}: {shown!r} is not a readable file path ({type(exc).__name__}: {exc})", param,
                  "invalid_image_url") from None


def _check_host(url: str, param: str, policy: ImagePolicy) -> None:
    """Refuse URLs whose host resolves to a non-public address (SSRF), unless allowed."""
    host = urlparse(url).hostname
    if not host:
        raise bad(f"{param}: {url} has no host", param, "invalid_image_url")
    if policy.allow_private_hosts:
        return
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise bad(f"{param}: cannot resolve {host} ({exc})", param, "image_fetch_failed") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise bad(f"{param}: {host} resolves to {address}, a non-public address; this server fetches only "
                      "from public hosts (start it with --allow-private-image-hosts to allow this)", param,
                      "remote_host_forbidden")


async def _from_remote(url: str, param: str, policy: ImagePolicy) -> bytes:
    if not policy.allow_remote:
        raise bad(f"{param}: remote image URLs are refused (the server fetches nothing by default); send the "
                  "image as a data: URL, or start the server with --allow-remote-images", param,
                  "remote_images_disabled")
    import httpx

    chunks, size = [], 0
    try:
        async with httpx.AsyncClient(timeout=policy.remote_timeout, follow_redirects=False) as client:
            for _hop in range(policy.max_redirects + 1):  # redirects followed by hand: every hop is checked
                await asyncio.to_thread(_check_host, url, param, policy)
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = str(response.url.join(response.headers.get("location", "")))
                        if not is_remote(url):
                            raise bad(f"{param}: redirected to a non-http(s) URL", param, "image_fetch_failed")
                        continue
                    if response.status_code != 200:
                        raise bad(f"{param}: fetching {url} gave HTTP {response.status_code}", param,
                                  "image_fetch_failed")
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > policy.max_bytes:
                            raise bad(f"{param}: {url} is larger than {policy.max_bytes} bytes", param,
                                      "image_too_large")
                        chunks.append(chunk)
                    return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise bad(f"{param}: fetching {url} failed: {exc}", param, "image_fetch_failed") from None
    raise bad(f"{param}: more than {policy.max_redirects} redirects", param, "image_fetch_failed")


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


async def fetch_bytes(part: ImagePart, policy: ImagePolicy) -> bytes:
    """The raw bytes of one image part (decoding is separate: it is CPU work)."""
    url = part.url.strip()
    if url.startswith("data:"):
        return _from_data_url(url, part.param)
    if is_remote(url):
        try:
            return await asyncio.wait_for(_from_remote(url, part.param, policy), policy.remote_timeout)
        except asyncio.TimeoutError:
            raise bad(f"{part.param}: fetching the image took longer than {policy.remote_timeout} s", part.param,
                      "image_fetch_failed") from None
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # paths (incl. C:\ on Windows)
        return await asyncio.to_thread(_from_file, url, part.param, policy)
    raise bad(f"{part.param}: unsupported URL scheme {scheme!r} (use data:, a local path or http(s))", part.param,
              "invalid_image_url")

