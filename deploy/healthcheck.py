"""Container health check: GET /health on the port the entrypoint gave the server.

Exit 0 when vLLM answers 200 (engine up and responsive), 1 otherwise. Plain
standard library, because python3 is the one tool every image here surely has.
"""

import os
import sys
import urllib.request

PORT = os.environ.get("VLLM_PRUNE_PORT", "8000")

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=10) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as error:  # refused, timed out, or an HTTP error status
    print(f"unhealthy: {error}", file=sys.stderr)
    sys.exit(1)
