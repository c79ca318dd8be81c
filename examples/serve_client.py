"""Client for tf-serve, standard library only.

    python examples/serve_client.py photo.jpg                                  # faces as JSON
    python examples/serve_client.py photo.jpg --anonymize anon.jpg --mode pixelate
    python examples/serve_client.py photo.jpg --url http://10.0.0.5:8000 --timeout 900

Exit status: 0 success, 1 the server refused the request (its JSON error is printed on
stderr) or could not be reached.
"""

from __future__ import annotations

import argparse
import http.client
import json
import mimetypes
import sys
import urllib.error
import urllib.parse
import urllib.request


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
    parser.add_argument("--mode", choices=("blur", "pixelate"), default="blur",
                        help="how /anonymize hides faces (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="give up after S seconds without an answer; a large photo on a CPU "
                             "replica takes minutes (default: %(default)s; 0: wait as long as "
                             "the server works)")
    args = parser.parse_args(argv)
    if args.timeout < 0:
        parser.error(f"--timeout must be >= 0, got {args.timeout}")
    with open(args.image, "rb") as f:
        data = f.read()
    content_type = mimetypes.guess_type(args.image)[0] or "application/octet-stream"
    base = args.url.rstrip("/")
    url = (f"{base}/anonymize?{urllib.parse.urlencode({'mode': args.mode})}"
           if args.anonymize else f"{base}/detect")
    try:
        body, headers = post_image(url, data, content_type, args.timeout or None)
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
        with open(args.anonymize, "wb") as f:
            f.write(body)
        faces = {k.lower(): v for k, v in headers.items()}.get("x-faces", "?")
        print(f"{args.anonymize}: {faces} face(s) hidden")
    else:
        print(json.dumps(json.loads(body), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
