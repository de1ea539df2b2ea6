"""Hub access before training, failed uploads that lose nothing, and failing fast offline (no network: all mocked)."""

import os
import time

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from peft import get_peft_model

from conftest import synthetic_task, tiny_model, train, training_args
from peft_continual import ContinualTrainer, NLoraConfig
from peft_continual import hub
from peft_continual.hub import HubAccessError, HubUploadError
from test_persistence import FakeApi


def _push_trainer(tokenizer, tmp_path, **args):
    model, targets = tiny_model("llama", tokenizer)
    return ContinualTrainer(
        model=get_peft_model(model, NLoraConfig(r=4, target_modules=set(targets))), processing_class=tokenizer,
        args=training_args(tmp_path, push_to_hub=True, hub_model_id="me/run", **args), max_source_length=64,
    )  # fmt: skip


class NoNetwork:
    """huggingface_hub's HTTP session on a machine without network: every request fails at once."""

    def head(self, url, **kwargs):
        raise httpx2.ConnectError("[Errno -2] Name or service not known")


@pytest.fixture
def online(monkeypatch):
    """Offline mode off (conftest turns it on), whatever the process read at start-up."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_offline_mode_fails_before_training_without_a_request(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "get_session", lambda: pytest.fail("no request in offline mode"))
    with pytest.raises(HubAccessError, match=r"'me/run' on the Hugging Face Hub .* cannot be reached: offline mode is on"):
        _push_trainer(tokenizer, tmp_path)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_no_network_fails_at_once_naming_the_hub(tokenizer, tmp_path, monkeypatch, online):
    monkeypatch.setattr(hub, "get_session", NoNetwork)
    started = time.perf_counter()
    with pytest.raises(HubAccessError, match=r"cannot be reached: ConnectError: \[Errno -2\].*before training"):
        _push_trainer(tokenizer, tmp_path)
    assert time.perf_counter() - started < 5  # one request, no minute of retries


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("GET", "https://huggingface.co/api/whoami-v2")
    return HfHubHTTPError(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    "whoami,create_error,message",
    [
        (LocalTokenNotFoundError("no token"), None, "needs a Hugging Face token .* `hf auth login`, set HF_TOKEN"),
        (_http_error(401), None, "refused the token for pushing to 'me/run' .*401.*write access"),
        ({"name": "me", "auth": {"accessToken": {"role": "read"}}}, None, "token of 'me' is read-only"),
        (None, _http_error(403), "cannot create or write the model repo 'me/run' as 'me' .*403.*--hub_model_id"),
    ],
    ids=["no-token", "bad-token", "read-only-token", "forbidden-repo"],
)  # fmt: skip
def test_token_and_repo_are_checked_before_training(whoami, create_error, message, tokenizer, tmp_path, monkeypatch):
    api = FakeApi(monkeypatch, whoami=whoami)
    api.create_error = create_error
    with pytest.raises(HubAccessError, match=message):
        _push_trainer(tokenizer, tmp_path)
    assert not (tmp_path / "out").exists() and "upload_folder" not in [c[0] for c in api.calls]


def test_the_check_uses_the_arguments_token_and_privacy(tokenizer, tmp_path, monkeypatch):
    tokens = []
    monkeypatch.setattr(hub.HfApi, "__init__", lambda api, token=None, **kw: tokens.append(token) or None)
    api = FakeApi(monkeypatch)
    _push_trainer(tokenizer, tmp_path, hub_token="hf_TOKEN", hub_private_repo=True)
    assert tokens == ["hf_TOKEN"] and api.calls[1] == ("create_repo", "me/run", {"private": True, "exist_ok": True, "repo_type": "model"})


def test_failed_upload_at_the_end_of_training_keeps_the_run(tokenizer, tmp_path, monkeypatch):
    api = FakeApi(monkeypatch)
    trainer = _push_trainer(tokenizer, tmp_path)
    api.upload_error = httpx2.ConnectError("[Errno -2] Name or service not known")
    final = tmp_path / "out" / "final"
    with pytest.raises(HubUploadError) as error:
        trainer.train_continual([synthetic_task(n, n_train=8) for n in ("colors", "animals")])
    assert str(error.value) == (
        f"upload to 'me/run' on the Hugging Face Hub ({constants.ENDPOINT}) failed: ConnectError: [Errno -2] Name or "
        f"service not known; your run is saved in {final} (ContinualTrainer.from_continual loads it; its push_to_hub() "
        "retries the upload)"
    )  # fmt: skip
    assert error.value.__cause__ is api.upload_error
    base, _ = tiny_model("llama", tokenizer)
    again = ContinualTrainer.from_continual(str(final), base, training_args(tmp_path / "again"), processing_class=tokenizer)
    assert again.result.accuracy_matrix == trainer.result.accuracy_matrix and again.result.num_trained == 2


def test_failed_push_names_the_repo_and_the_hub(tokenizer, tmp_path, monkeypatch):
    trainer = train(tokenizer, tmp_path, NLoraConfig(r=4, lora_alpha=8), names=("colors",), epochs=1)
    api = FakeApi(monkeypatch)
    api.upload_error = httpx2.ConnectError("[Errno -2] Name or service not known")
    with pytest.raises(HubUploadError, match=r"^upload to 'me/x' on the Hugging Face Hub \(https://.*\) failed: ConnectError: \[Errno -2\] Name or service not known$") as error:  # fmt: skip
        trainer.push_to_hub(repo_id="me/x")
    assert error.value.__cause__ is api.upload_error


def test_hub_unreachable_is_one_short_request(monkeypatch, online):
    seen = []

    class Session:
        def head(self, url, **kwargs):
            seen.append((url, kwargs))

    monkeypatch.setattr(hub, "get_session", Session)
    assert hub.hub_unreachable() is None and seen == [(constants.ENDPOINT, {"timeout": hub.HUB_PROBE_TIMEOUT})]
    monkeypatch.setattr(hub, "get_session", NoNetwork)
    assert hub.hub_unreachable() == "ConnectError: [Errno -2] Name or service not known"
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub.hub_unreachable() == "offline mode is on (HF_HUB_OFFLINE=1)"


def test_enable_offline_mode_reaches_huggingface_hub_and_peft(monkeypatch, online):
    hub.enable_offline_mode()  # `online` restores both afterwards
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
