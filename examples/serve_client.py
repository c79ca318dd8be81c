"""Client for tf-serve, standard library only.

    python examples/serve_client.py photo.jpg                                  # faces as JSON
    python examples/serve_client.py photo.jpg --anonymize anon.jpg --mode pixelate
    python examples/serve_client.py photo.png --anonymize anon.jpg        # written as JPEG
    python examples/serve_client.py photo.jpg --url http://10.0.0.5:8000 --timeout 900

The image's Content-Type is told from its bytes (a JPEG named photo.txt is sent as
image/jpeg); --anonymize OUT asks for the format of OUT's suffix (.jpg, .jpeg or .png).

Exit status: 0 success, 1 the server refused the request (its JSON error is printed on
stderr) or could not be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

#: The service's /anonymize ``format`` for each suffix of --anonymize OUT.
OUTPUT_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}
#: (offset, leading bytes, Content-Type) of the image formats told from their bytes.
SIGNATURES = ((0, b"\xff\xd8\xff", "image/jpeg"), (0, b"\x89PNG\r\n\x1a\n", "image/png"),
              (0, b"GIF87a", "image/gif"), (0, b"GIF89a", "image/gif"), (8, b"WEBP", "image/webp"),
              (0, b"BM", "image/bmp"), (0, b"II*\x00", "image/tiff"), (0, b"MM\x00*", "image/tiff"))


def content_type(data: bytes) -> str:
    """The image type of ``data`` told from its first bytes (not the file's name), else
    ``application/octet-stream`` (the service then tells it from the bytes itself)."""
    for offset, magic, kind in SIGNATURES:
        if data[offset:offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return kind
    return "application/octet-stream"


def output_format(path: str) -> str | None:
    """The /anonymize ``format`` for an output path, by its suffix (None: not one the
    service writes)."""
    return OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower())


def post_image(url: str, data: bytes, content_type: str, timeout: float | None = 600.0
               ) -> tuple[bytes, dict[str, str]]:
    """POSTs image bytes; returns (body, headers). Raises urllib.error.HTTPError on 4xx/5xx.

    ``timeout`` bounds each wait on the socket (None: no bound)."""
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(), dict(response.headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send an image to tf-serve.")
    parser.add_argument("image", help="image file (JPEG, PNG, ...)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server (default: %(default)s)")
    parser.add_argument("--anonymize", metavar="OUT",
                        help="write the anonymised image to OUT instead of printing the faces")
    parser.add_argument("--mode", choices=("blur", "pixelate", "solid"), default="blur",
                        help="how /anonymize hides faces (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="give up after S seconds without an answer; a large photo on a CPU "
                             "replica takes minutes (default: %(default)s; 0: wait as long as "
                             "the server works)")
    args = parser.parse_args(argv)
    if args.timeout < 0:
        parser.error(f"--timeout must be >= 0, got {args.timeout}")
    if args.anonymize and output_format(args.anonymize) is None:
        parser.error(f"--anonymize {args.anonymize}: the service writes JPEG or PNG; give an "
                     f"output name ending in {', '.join(OUTPUT_FORMATS)}")
    try:
        with open(args.image, "rb") as f:
            data = f.read()
    except OSError as exc:
        print(f"serve_client: cannot read {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    folder = os.path.dirname(os.path.abspath(args.anonymize)) if args.anonymize else None
    if folder is not None and not os.path.isdir(folder):  # before the server does the work
        print(f"serve_client: cannot write {args.anonymize}: no folder {folder}", file=sys.stderr)
        return 1
    base = args.url.rstrip("/")
    query = {"mode": args.mode, "format": output_format(args.anonymize or "")}
    url = (f"{base}/anonymize?{urllib.parse.urlencode(query)}"
           if args.anonymize else f"{base}/detect")
    try:
        body, headers = post_image(url, data, content_type(data), args.timeout or None)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        print(f"serve_client: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"serve_client: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException) as exc:  # a read timeout, a dropped connection
        print(f"serve_client: {base}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if args.anonymize:
        try:
            with open(args.anonymize, "wb") as f:
                f.write(body)
        except OSError as exc:
            print(f"serve_client: cannot write {args.anonymize}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        faces = {k.lower(): v for k, v in headers.items()}.get("x-faces", "?")
        print(f"{args.anonymize}: {faces} face(s) hidden")
    else:
        print(json.dumps(json.loads(body), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
