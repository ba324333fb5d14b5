"""Where a Hugging Face model or tokenizer comes from: `<repo-id-or-folder>[@revision]`, as `--model hf:...` and
BABILong's `tokenizer=hf:...` take it, and the from_pretrained arguments that keep a folder offline."""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError


def split_hf_source(spec: str) -> tuple[str, str | None]:
    """('org/name', 'rev') from 'org/name@rev'; a local folder or a bare id has no revision."""
    if "@" in spec and not Path(spec).exists():
        source, revision = spec.rsplit("@", 1)
        if not source or not revision:
            raise HarnessError(f"Hugging Face source {spec!r} should read <repo-id-or-folder>[@revision]")
        return source, revision
    return spec, None


def hf_load_kwargs(source: str, revision: str | None) -> dict:
    """from_pretrained arguments: a local folder never reaches the network; a repo id is fetched (the user named it)
    and cached by huggingface_hub, or read from that cache offline (HF_HUB_OFFLINE=1)."""
    if Path(source).is_dir():
        return {"local_files_only": True}
    return {"revision": revision} if revision else {}
