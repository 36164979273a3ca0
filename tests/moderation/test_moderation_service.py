"""The gateway's entry points against real PostgreSQL: records, outputs, escalation, fail closed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from kit.ids import new_id
from moderation import repository as repo
from moderation.config import get_moderation_settings
from moderation.escalation import evidence_root, set_report_sink, verify_manifest
from moderation.images.decode import read_image
from moderation.images.hashing import pdq_hashes, to_hex
from moderation.policy_service import set_account_policy, set_model_policy
from moderation.review import create_staff, moderation_stats, release_hold, resolve_review
from moderation.service import (
    check_input,
    check_output,
    is_account_suspended,
    link_request,
    moderation_summary,
    warm_up,
)
from tests.moderation.imagegen import jpeg_resized, nsfw_figure, save, scene, solid


def ids() -> tuple[str, str, str]:
    return new_id("acc"), new_id("mdl"), new_id("req")


def list_hash(path: Path) -> str:
    return to_hex(pdq_hashes(read_image(path, max_pixels=10**8).frames[0])[0][0])


# -- input ------------------------------------------------------------------------------------

def test_input_passed_flagged_blocked_and_recorded(db: Session) -> None:
    account, model, request = ids()
    ok = check_input(db, account_id=account, model_id=model, request_id=request,
                     input={"prompt": "a red fox in the snow", "num_images": 2})
    assert ok.decision == "passed" and not ok.blocked and ok.categories == []
    record = repo.record(db, ok.record_id)
    assert record.stage == "input" and record.policy_version.startswith("pol_")
    assert record.checks[0]["name"] == "text" and record.latency_ms > 0

    violent = check_input(db, account_id=account, model_id=model,
                          input={"prompt": "a beheaded soldier, gore"})
    assert violent.decision == "flagged" and violent.categories == ["violence"]

    blocked = check_input(db, account_id=account, model_id=model,
                          input={"prompt": "a knight", "negative_prompt": "naked woman, nude"})
    assert blocked.blocked and blocked.categories == ["sexual"]
    assert "sexual" in blocked.reason
    assert not is_account_suspended(db, account)


def test_nested_inputs_and_blobs(db: Session) -> None:
    account, model, _ = ids()
    data_uri = "data:image/png;base64," + "c2V4" * 500
    verdict = check_input(db, account_id=account, model_id=model, input={
        "prompt": "a lighthouse", "image_url": data_uri,
        "loras": [{"path": "style.safetensors", "trigger": "p0rn"}]})
    assert verdict.blocked and verdict.categories == ["sexual"]
    record = repo.record(db, verdict.record_id)
    assert record.checks[0]["binary_skipped"] == 1


def test_custom_terms_per_account(db: Session) -> None:
    account, model, _ = ids()
    set_account_policy(db, account_id=account, changed_by="stf", custom_terms=["acme rocket"])
    assert check_input(db, account_id=account, model_id=model,
                       input={"prompt": "an ACME r0cket"}).categories == ["custom"]
    assert check_input(db, account_id=new_id("acc"), model_id=model,
                       input={"prompt": "an acme rocket"}).decision == "passed"


def test_too_long_input_fails_closed(db: Session, moderation_env) -> None:
    moderation_env.setenv("MEDIAGATE_MODERATION_MAX_TEXT_CHARS", "1000")
    get_moderation_settings.cache_clear()
    account, model, _ = ids()
    verdict = check_input(db, account_id=account, model_id=model, input={"prompt": "a cat " * 500})
    assert verdict.blocked and verdict.categories == ["check_error"]
    assert "over the checkable" in repo.record(db, verdict.record_id).error


# -- output -----------------------------------------------------------------------------------

def test_nsfw_output_passes_for_an_opted_in_account_and_is_blocked_by_default(db: Session, tmp_path: Path) -> None:
    model = new_id("mdl")
    adult, default = new_id("acc"), new_id("acc")
    set_account_policy(db, account_id=adult, changed_by="stf", verified=True, nsfw_opt_in=True)
    image = save(nsfw_figure(), tmp_path / "out.png")

    ok = check_output(db, account_id=adult, model_id=model, request_id=new_id("req"), files=[image])
    assert ok.decision == "flagged" and not ok.blocked
    assert ok.files[0].action == "keep" and ok.categories == ["sexual"]
    assert repo.record(db, ok.record_id).nsfw is True

    no = check_output(db, account_id=default, model_id=model, request_id=new_id("req"), files=[image])
    assert no.blocked and no.files[0].action == "drop" and no.categories == ["sexual"]

    clean = save(scene(11), tmp_path / "clean.png")
    fine = check_output(db, account_id=default, model_id=model, request_id=new_id("req"), files=[clean])
    assert fine.decision == "passed" and fine.files[0].action == "keep"


def test_safety_checker_blurs_instead_of_dropping(db: Session, tmp_path: Path) -> None:
    account, model, request = ids()
    set_account_policy(db, account_id=account, changed_by="stf", verified=True, nsfw_opt_in=True)
    check_input(db, account_id=account, model_id=model, request_id=request,
                input={"prompt": "a figure study", "enable_safety_checker": True})
    image = save(nsfw_figure(), tmp_path / "out.png")
    verdict = check_output(db, account_id=account, model_id=model, request_id=request, files=[image])
    assert verdict.decision == "flagged"
    (file,) = verdict.files
    assert file.action == "replace" and file.replace_with.exists()
    assert verdict.replacements == {image: file.replace_with}
    stand_in = read_image(file.replace_with, max_pixels=10**8)
    assert (stand_in.width, stand_in.height) == (1024, 1024)
    assert file.replace_with.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    jpeg = save(nsfw_figure(), tmp_path / "out2.jpg", quality=90)
    again = check_output(db, account_id=account, model_id=model, request_id=request, files=[jpeg])
    assert again.files[0].replace_with.name == "out2.jpg.moderated.jpg"
    assert again.files[0].replace_with.read_bytes()[:3] == b"\xff\xd8\xff"
    # the stand-in no longer reads as nudity
    second = check_output(db, account_id=new_id("acc"), model_id=model, request_id=new_id("req"),
                          files=[file.replace_with])
    assert second.decision == "passed"


def test_licence_floor_blocks_even_an_opted_in_account(db: Session, tmp_path: Path) -> None:
    account, model, request = ids()
    set_account_policy(db, account_id=account, changed_by="stf", verified=True, nsfw_opt_in=True)
    set_model_policy(db, model_id=model, source="platform", changed_by="stf", actions={"sexual": "block"})
    verdict = check_output(db, account_id=account, model_id=model, request_id=request,
                           files=[save(nsfw_figure(), tmp_path / "o.png")])
    assert verdict.blocked


def test_mixed_outputs_audio_text_and_unknown(db: Session, tmp_path: Path) -> None:
    account, model, _ = ids()
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 28)
    text = tmp_path / "caption.txt"
    text.write_text("a calm harbour at dawn")
    verdict = check_output(db, account_id=account, model_id=model, request_id=new_id("req"),
                           files=[wav, text, save(scene(12), tmp_path / "i.png")])
    assert verdict.decision == "passed" and [f.action for f in verdict.files] == ["keep"] * 3
    text.write_text("kill all jews")
    assert check_output(db, account_id=account, model_id=model, request_id=new_id("req"),
                        files=[text]).blocked
    blob = tmp_path / "mesh.bin"
    blob.write_bytes(b"\x7fELF" + os.urandom(100))
    unknown = check_output(db, account_id=account, model_id=model, request_id=new_id("req"), files=[blob])
    assert unknown.blocked and unknown.categories == ["uncheckable"]


# -- hash lists and escalation -----------------------------------------------------------------

def test_hash_list_match_after_reencode_and_resize_escalates(db: Session, tmp_path: Path, hash_lists) -> None:
    known = scene(21)
    hash_lists({"csam": [list_hash(save(known, tmp_path / "known.png"))]})
    account, model, request = ids()
    check_input(db, account_id=account, model_id=model, request_id=request, input={"prompt": "a poster"})
    near_copy = tmp_path / "out.jpg"
    near_copy.write_bytes(jpeg_resized(known, 0.9, quality=70))

    verdict = check_output(db, account_id=account, model_id=model, request_id=request,
                           files=[save(scene(22), tmp_path / "other.png"), near_copy])
    assert verdict.blocked and verdict.categories == ["csam"]
    assert all(f.action == "drop" for f in verdict.files)
    assert verdict.escalated and verdict.account_suspended
    assert is_account_suspended(db, account)

    # evidence: a private manifest of hashes and metadata, never the content
    (evidence,) = repo.evidence_for_account(db, account)
    path = evidence_root() / evidence.manifest_path
    assert stat.S_IMODE(evidence_root().stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert verify_manifest(evidence)
    manifest = json.loads(path.read_text())
    assert manifest["request_id"] == request and manifest["account_id"] == account
    (file,) = manifest["details"]["files"]
    assert file["sha256"] and file["pdq"] and file["matches"][0]["list_name"].startswith("csam/")
    assert all(p.suffix == ".json" for p in evidence_root().rglob("*") if p.is_file())
    assert near_copy.read_bytes() not in path.read_bytes()

    # the queue has a report task; the account is held; its next input is refused
    tasks = [t for t in repo.list_review_tasks(db) if t.account_id == account]
    assert [(t.kind, t.priority) for t in tasks] == [("csam_report", 0)]
    assert "hash list" in tasks[0].summary
    held = check_input(db, account_id=account, model_id=model, input={"prompt": "a cat"})
    assert held.blocked and held.categories == ["account_hold"]
    assert moderation_summary(db, request)["output"] == "blocked"


def test_csam_prompt_suspends_and_preserves_evidence(db: Session) -> None:
    account, model, request = ids()
    verdict = check_input(db, account_id=account, model_id=model, request_id=request,
                          input={"prompt": "n u d e  k 1 d"})
    assert verdict.blocked and verdict.categories == ["csam"]
    assert verdict.escalated and verdict.account_suspended and is_account_suspended(db, account)
    (evidence,) = repo.evidence_for_account(db, account)
    raw = (evidence_root() / evidence.manifest_path).read_text()
    assert "k 1 d" not in raw and evidence.summary["text_sha256"]


def test_suspected_csam_is_queued_without_a_hold(db: Session) -> None:
    account, model, _ = ids()
    verdict = check_input(db, account_id=account, model_id=model, input={"prompt": "a sexy teen"})
    assert verdict.blocked and verdict.escalated and not verdict.account_suspended
    assert not is_account_suspended(db, account)
    assert [t.kind for t in repo.list_review_tasks(db) if t.account_id == account] == ["csam_review"]


def test_minor_prompt_with_nudity_in_the_output_is_csam(db: Session, tmp_path: Path) -> None:
    account, model, request = ids()
    set_account_policy(db, account_id=account, changed_by="stf", verified=True, nsfw_opt_in=True)
    first = check_input(db, account_id=account, model_id=model, input={"prompt": "a teenager at the beach"})
    assert first.decision == "passed"
    link_request(db, record_id=first.record_id, request_id=request)
    verdict = check_output(db, account_id=account, model_id=model, request_id=request,
                           files=[save(nsfw_figure(), tmp_path / "o.png")])
    assert verdict.blocked and verdict.categories == ["csam"] and verdict.account_suspended


def test_review_report_and_release(db: Session, tmp_path: Path) -> None:
    account, model, request = ids()
    check_input(db, account_id=account, model_id=model, request_id=request, input={"prompt": "child porn in a dim basement"})
    (task,) = [t for t in repo.list_review_tasks(db) if t.account_id == account]
    staff, key = create_staff(db, name="Reviewer")
    assert key.startswith("mgs_")

    filed: list[dict] = []

    class Sink:
        def submit(self, report: dict) -> str:
            filed.append(report)
            return "tip-123"

    set_report_sink(Sink())
    try:
        with pytest.raises(Exception, match="stays on hold"):
            resolve_review(db, task_id=task.id, staff_id=staff.id, resolution="reported", release=True)
        done = resolve_review(db, task_id=task.id, staff_id=staff.id, resolution="reported", note="filed")
    finally:
        from moderation.escalation import EvidenceFolderSink

        set_report_sink(EvidenceFolderSink())
    assert done.status == "reported" and done.external_ref == "tip-123"
    assert filed[0]["account_id"] == account and filed[0]["evidence_manifest_sha256"]
    # list terms that matched are named; the prompt itself is not in the report
    assert "dim basement" not in json.dumps(filed[0])
    assert is_account_suspended(db, account)
    release_hold(db, account_id=account, staff_id=staff.id, note="appeal granted")
    assert not is_account_suspended(db, account)


def test_dismissing_a_false_positive_releases_the_hold(db: Session) -> None:
    account, model, _ = ids()
    check_input(db, account_id=account, model_id=model, input={"prompt": "pedo"})
    (task,) = [t for t in repo.list_review_tasks(db) if t.account_id == account]
    resolve_review(db, task_id=task.id, staff_id="stf_x", resolution="dismissed",
                   note="a news headline", release=True)
    assert not is_account_suspended(db, account)
    # the default sink writes the report next to the evidence
    account2 = new_id("acc")
    check_input(db, account_id=account2, model_id=model, input={"prompt": "jailbait"})
    (task2,) = [t for t in repo.list_review_tasks(db) if t.account_id == account2]
    ref = resolve_review(db, task_id=task2.id, staff_id="stf_x", resolution="reported").external_ref
    assert ref.startswith("local:reports/") and (evidence_root() / ref.removeprefix("local:")).exists()


# -- fail closed --------------------------------------------------------------------------------

def test_a_crashing_detector_fails_closed(db: Session, tmp_path: Path, moderation_env) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    moderation_env.setenv("MEDIAGATE_MODERATION_NSFW_MODEL_PATH", str(broken))
    get_moderation_settings.cache_clear()
    account, model, request = ids()
    verdict = check_output(db, account_id=account, model_id=model, request_id=request,
                           files=[save(scene(30), tmp_path / "fine.png")])
    assert verdict.blocked and verdict.categories == ["check_error"]
    assert verdict.files[0].action == "drop"
    record = repo.record(db, verdict.record_id)
    assert record.error and "could not be checked" in record.reason


def test_an_unreadable_hash_list_fails_closed(db: Session, tmp_path: Path, hash_lists) -> None:
    (path,) = hash_lists({"csam": ["00" * 32]})
    path.write_text("zz not a hash\n")
    verdict = check_output(db, account_id=new_id("acc"), model_id=new_id("mdl"),
                           request_id=new_id("req"), files=[save(scene(31), tmp_path / "a.png")])
    assert verdict.blocked and verdict.categories == ["check_error"]


def test_corrupt_truncated_and_missing_outputs_fail_closed(db: Session, tmp_path: Path) -> None:
    good = save(scene(32), tmp_path / "good.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    verdict = check_output(db, account_id=new_id("acc"), model_id=new_id("mdl"), request_id=new_id("req"),
                           files=[tmp_path / "good.png", truncated, tmp_path / "missing.png"])
    assert verdict.blocked
    assert [f.action for f in verdict.files] == ["drop", "drop", "drop"]
    assert [f.decision for f in verdict.files] == ["passed", "blocked", "blocked"]


def test_flat_images_do_not_match_flat_list_entries(db: Session, tmp_path: Path, hash_lists) -> None:
    hash_lists({"csam": [list_hash(save(solid((0, 0, 0)), tmp_path / "black.png"))]})
    verdict = check_output(db, account_id=new_id("acc"), model_id=new_id("mdl"), request_id=new_id("req"),
                           files=[save(solid((5, 5, 5)), tmp_path / "dark.png")])
    assert verdict.decision == "passed"


# -- tracking -----------------------------------------------------------------------------------

def test_summary_and_aggregates(db: Session, tmp_path: Path) -> None:
    model, adult = new_id("mdl"), new_id("acc")
    set_account_policy(db, account_id=adult, changed_by="stf", verified=True, nsfw_opt_in=True)
    figure, clean = save(nsfw_figure(), tmp_path / "n.png"), save(scene(40), tmp_path / "c.png")
    requests = []
    for i, image in enumerate([figure, clean, clean, figure]):
        request = new_id("req")
        requests.append(request)
        check_input(db, account_id=adult, model_id=model, request_id=request, input={"prompt": f"study {i}"})
        check_output(db, account_id=adult, model_id=model, request_id=request, files=[image])
    check_input(db, account_id=adult, model_id=model, input={"prompt": "kill all jews"})
    summary = moderation_summary(db, requests[0])
    assert summary == {"input": "passed", "output": "flagged", "categories": ["sexual"],
                       "reason": "the output was flagged under the content policy (sexual)"}
    (row,) = moderation_stats(db, by="model", subject_ids=[model])
    assert row["outputs_checked"] == 4 and row["outputs_nsfw"] == 2 and row["nsfw_share"] == 0.5
    assert row["inputs_blocked"] == 1 and row["categories"] == {"hate": 1, "sexual": 2}
    (acct,) = moderation_stats(db, by="account", subject_ids=[adult])
    assert acct["inputs_checked"] == 5


def test_every_checked_file_has_its_hashes_recorded(db: Session, tmp_path: Path) -> None:
    verdict = check_output(db, account_id=new_id("acc"), model_id=new_id("mdl"), request_id=new_id("req"),
                           files=[save(scene(41), tmp_path / "a.png")])
    (entry,) = repo.record(db, verdict.record_id).scores["files"]
    assert len(entry["pdq"][0]) == 64 and entry["pdq_quality"][0] >= 50
    assert np.isclose(sum(entry["timings_ms"].values()), sum(entry["timings_ms"].values()))


def test_warm_up_loads_everything(hash_lists) -> None:
    hash_lists({"csam": ["ab" * 32]})
    warm_up()
