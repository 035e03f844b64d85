#!/usr/bin/env bash
# Which build of torch==2.13.0 `make setup` installs, and the pip arguments for it; run from the
# repository root. Installs nothing, so tests and `make print-torch-variant` can call it freely.
#   TORCH_VARIANT    cpu | cuda; unset or empty: cuda if `nvidia-smi -L` lists a GPU, else cpu
#   TORCH_INDEX_URL  optional extra index to take torch's build from (see infra/README.md)
# stdout: shell assignments for `eval` (variant=..., pip_args=...); stderr: the choice and why.
set -euo pipefail

detect() {  # -> "cpu|cuda (reason)"
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "cpu (no nvidia-smi)"
  elif gpus=$(timeout 30 nvidia-smi -L 2>/dev/null) && [[ "$gpus" == GPU* ]]; then
    echo "cuda (nvidia-smi: ${gpus%%$'\n'*})"
  else  # a driver that is installed but not working, or a container without the GPU passed in
    echo "cpu (nvidia-smi lists no GPU)"
  fi
}

case "${TORCH_VARIANT:-}" in
  "") read -r variant reason <<< "$(detect)" ;;
  cpu | cuda) variant=$TORCH_VARIANT reason="(TORCH_VARIANT=$TORCH_VARIANT)" ;;
  *) echo "torch_variant: TORCH_VARIANT must be cpu or cuda (or unset to detect), got '$TORCH_VARIANT'" >&2
     exit 2 ;;
esac

# Both variants install the same lock (torch==2.13.0 and everything else); cuda adds the CUDA build's
# pinned libraries and excludes the +cpu wheel (requirements-cuda.lock says why).
pip_args=(-r requirements.lock)
[[ $variant == cuda ]] && pip_args+=(-r requirements-cuda.lock)
[[ -n "${TORCH_INDEX_URL:-}" ]] && pip_args+=(--extra-index-url "$TORCH_INDEX_URL")

other=$([[ $variant == cpu ]] && echo cuda || echo cpu)
echo "torch variant: $variant $reason; override with TORCH_VARIANT=$other" >&2
printf 'variant=%q\npip_args=%q\n' "$variant" "${pip_args[*]}"
