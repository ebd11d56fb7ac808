#!/usr/bin/env bash
# Regenerate the SPIFFE Workload API modules (src/trustplane/identity/workload_api_pb/) from the
# vendored workload.proto with grpcio-tools (a test dependency: `bootstrap.sh --test`).
#
#   scripts/gen-protos.sh           rewrite the committed modules
#   scripts/gen-protos.sh OUT_DIR   write them under OUT_DIR instead (the test compares)
#
# The messages are built in a descriptor pool of their own, not protobuf's default pool:
# workload.proto declares no package, so a process that also loads another copy of it (the
# `spiffe` client library's, say) would otherwise fail with "duplicate symbol 'X509SVIDRequest'".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/src}" && cd "${1:-$root/src}" && pwd)"
python=${PYTHON:-python}
[[ -x "$root/.venv/bin/python" && -z "${PYTHON:-}" ]] && python="$root/.venv/bin/python"
package=trustplane/identity/workload_api_pb

cd "$root/src"
"$python" -m grpc_tools.protoc --proto_path=. \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$package/workload.proto"

"$python" - "$out/$package/workload_pb2.py" <<'EOF'
import sys

path = sys.argv[1]
text = open(path, encoding="utf-8").read()
default = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
if text.count(default) != 1:
    sys.exit(f"{path}: expected one {default!r}; has protoc's output changed?")
own_pool = (
    "# A pool of its own (scripts/gen-protos.sh says why), holding struct.proto first.\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "_POOL.AddSerializedFile(google_dot_protobuf_dot_struct__pb2.DESCRIPTOR.serialized_pb)\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)
open(path, "w", encoding="utf-8").write(text.replace(default, own_pool))
EOF
