"""``tunesmith push``: a finished run's ``model/`` (and a LoRA run's ``adapter/``) to a Hugging Face
Hub model repository, through huggingface_hub (``HfApi.create_repo`` and ``upload_folder``).

``model/`` is published as it is: the weights, the tokenizer or processor, and the model card
with its Hub metadata (evaluate/hub_card.py). A LoRA run's ``adapter/`` goes into the repository's
``adapter/`` folder. Everything that can be checked here is checked before the Hub is called:
the run's files against its ``hashes.json``, the folder's content, the repository id, the token
and whether the Hub may be reached at all, so a refusal names what is missing and uploads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HFValidationError, HTTPError
from huggingface_hub.utils import validate_repo_id

from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir

ADAPTER_FOLDER = "adapter"
"""Where a LoRA run's adapter goes in the repository (``subfolder="adapter"`` for PEFT)."""
TOKEN_HELP = "pass --token, set HF_TOKEN, or log in once with `hf auth login`"


def check_folder(model_dir: Path) -> None:
    """Refuses a ``model/`` that is not a publishable transformers folder: its config, its
    safetensors weights and a model card whose metadata the Hub can read.

    Raises:
        TunesmithError: naming what is missing or unreadable.
    """
    missing = [name for name in ("config.json", "README.md") if not (model_dir / name).is_file()]
    if not any(model_dir.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise TunesmithError(f"{model_dir} lacks {', '.join(missing)}: it is not a finished tunesmith model folder "
                             "(a run trained before model cards were written into model/ must be trained again)")  # fmt: skip
    try:
        ModelCard.load(model_dir / "README.md")
    except ValueError as error:
        raise TunesmithError(f"{model_dir / 'README.md'}: its metadata cannot be read by the Hub ({error})") from None


def hub_token(token: str | None) -> str:
    """The token to push with: ``token``, else huggingface_hub's (HF_TOKEN, or a stored login).

    Raises:
        TunesmithError: the Hub is offline (HF_HUB_OFFLINE), or there is no token.
    """
    if constants.HF_HUB_OFFLINE:
        raise TunesmithError("cannot push: the Hub is switched off here (HF_HUB_OFFLINE=1); "
                             "unset HF_HUB_OFFLINE where the Hub is reachable")  # fmt: skip
    found = token or get_token()
    if not found:
        raise TunesmithError(f"cannot push: no Hugging Face token with write access; {TOKEN_HELP}")
    return found


def _hub_failure(error: Exception, repo: str) -> TunesmithError:
    """The Hub's refusal (or silence) in one line that says what to do."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    match status:
        case 401:
            return TunesmithError(f"the Hub refused the token (401): it is invalid or expired; {TOKEN_HELP}")
        case 403:
            return TunesmithError(f"the Hub refused to write {repo} (403): the token has no write access to it, "
                                  "or the namespace is not yours; use a write token of that user or organisation")  # fmt: skip
        case None:
            return TunesmithError(f"cannot reach the Hugging Face Hub ({type(error).__name__}: {error}); check the "
                                  "network or HF_ENDPOINT, and try again")  # fmt: skip
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return TunesmithError(f"the Hub refused the push to {repo} ({first_line})")


def push(run_dir: str | Path, repo: str, *, private: bool = False, token: str | None = None,
         log: Callable[[str], None] = print) -> str:  # fmt: skip
    """Uploads a finished run's ``model/`` to the Hub model repository ``repo`` (made if it does not
    exist), and a LoRA run's ``adapter/`` into its ``adapter/`` folder.

    Args:
        repo: ``owner/name``.
        private: make the repository private (a repository that exists keeps its visibility).
        token: a Hub token with write access; default: huggingface_hub's (HF_TOKEN or a login).

    Returns:
        The repository's URL.

    Raises:
        TunesmithError: not a finished run, files changed since training, a malformed repo id,
            the Hub offline or unreachable, no token, or the Hub refusing the upload.
    """
    run = RunDir.open(run_dir)
    run.verify_hashes()  # publish the model as it was trained, or nothing
    check_folder(run.model_dir)
    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise TunesmithError(f"--repo {repo!r} is not a Hub repository id (owner/name): {error}") from None
    if "/" not in repo:
        raise TunesmithError(f"--repo {repo!r}: give the owner too, as owner/name (your user or organisation)")
    api = HfApi(token=hub_token(token))
    adapter = run.path / ADAPTER_FOLDER
    message = f"tunesmith push of the run {run.path.name}"
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        log(f"Uploading {run.model_dir} to {url}")
        api.upload_folder(repo_id=repo, folder_path=run.model_dir, repo_type="model", commit_message=message)
        if adapter.is_dir():
            log(f"Uploading {adapter} to {url}/tree/main/{ADAPTER_FOLDER}")
            api.upload_folder(repo_id=repo, folder_path=adapter, path_in_repo=ADAPTER_FOLDER, repo_type="model",
                              commit_message=f"{message}: its LoRA adapter")  # fmt: skip
    except HTTPError as error:  # huggingface_hub's HTTP errors: the Hub's answers and transport failures
        raise _hub_failure(error, repo) from None
    return str(url)
