"""Benchmark loaders and metrics on small files written here, scores computed by hand."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from vllm_prune.eval.benchmarks import (
    BENCHMARKS,
    BenchmarkFormatError,
    get_benchmark,
    load_benchmark,
)
from vllm_prune.eval.benchmarks.choice import (
    load_mmbench,
    load_scienceqa_img,
    parse_choice,
    score_choice,
)
from vllm_prune.eval.benchmarks.haystack import load_visual_haystack, score_visual_haystack
from vllm_prune.eval.benchmarks.mme import load_mme, parse_mme, score_mme
from vllm_prune.eval.benchmarks.normalize import normalize_answer
from vllm_prune.eval.benchmarks.pope import load_pope, parse_yes_no, score_pope
from vllm_prune.eval.benchmarks.refcoco import iou, load_refcoco, parse_box, score_refcoco
from vllm_prune.eval.benchmarks.vqa import (
    exact_match,
    load_gqa,
    load_textvqa,
    load_vizwiz,
    load_vqav2,
    score_gqa,
    score_vqa,
    vqa_accuracy,
)
from vllm_prune.eval.files import read_records, read_tsv
from vllm_prune.eval.sample import OPTION_LETTER, SHORT_ANSWER, Sample


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``datasets``' Arrow cache of the fixture files out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def png(color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def images(root: Path, *names: str) -> None:
    for name in names:
        write(root / name, png())


# ---------------------------------------------------------------- file reading


def test_malformed_jsonl_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"a": 1}\n\n{"a": 2}\n{"a": 3, b: 4}\n{"a": 5}\n')
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:4: invalid JSON"):
        read_records(path, "layout")


def test_missing_field_is_reported_with_its_line_counting_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"a": 1, "b": 1}\n\n{"a": 2}\n')
    records = read_records(path, "layout")
    assert records.get(0, "b") == 1
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:3: missing field 'b'"):
        records.get(1, "b")


def test_malformed_json_document_and_empty_file(tmp_path: Path) -> None:
    broken = write(tmp_path / "doc.json", '{"data": [\n  {"a": 1},\n  {"a": 2 "b": 3}\n]}\n')
    with pytest.raises(BenchmarkFormatError, match=rf"{broken}:3: invalid JSON"):
        read_records(broken, "layout", field="data")
    empty = write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{empty}: empty file"):
        read_records(empty, "layout")
    with pytest.raises(FileNotFoundError, match="expected layout: ROOT/x"):
        read_records(tmp_path / "absent.jsonl", "ROOT/x")
    other_field = write(tmp_path / "f.json", '{"data": [{"a": 1}]}')
    with pytest.raises(BenchmarkFormatError, match="no top-level field 'questions'"):
        read_records(other_field, "layout", field="questions")


def test_tsv_row_with_extra_cells_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "index\tA\tB\n0\tx\ty\n1\tx\ty\tz\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{path}: .*line 3"):
        read_tsv(path, "layout")


# ---------------------------------------------------------------- POPE


def pope_root(tmp_path: Path) -> Path:
    root = tmp_path / "pope"
    random_labels = ["yes", "yes", "yes", "no", "no", "no"]
    popular_labels = ["yes", "no", "yes", "no"]
    for category, labels in (("random", random_labels), ("popular", popular_labels)):
        records = [
            {"question_id": i, "image": f"COCO_val2014_{i:012d}.jpg", "text": f"Is there a {i}?",
             "label": label}
            for i, label in enumerate(labels)
        ]  # fmt: skip
        write(root / "coco" / f"coco_pope_{category}.json", jsonl(records))
    images(root, *(f"val2014/COCO_val2014_{i:012d}.jpg" for i in range(6)))
    return root


def test_pope_parsing_follows_llava() -> None:
    assert parse_yes_no("Yes, there is.") == "yes"
    assert parse_yes_no("No, there isn't.") == "no"
    assert parse_yes_no("There is not a dog.") == "no"
    assert parse_yes_no("I see no cat. Yes.") == "no"  # first sentence only
    assert parse_yes_no("NO") == "yes"  # LLaVA matches "No", "no", "not" case-sensitively


def test_pope_loads_and_scores_per_category_and_mean(tmp_path: Path) -> None:
    root = pope_root(tmp_path)
    samples = load_pope(root, categories=("popular", "random"))
    assert [s.id for s in samples][:2] == ["popular/0", "popular/1"]
    assert samples[0].prompt == f"Is there a 0?\n{SHORT_ANSWER}"
    assert samples[0].images == (root / "val2014" / "COCO_val2014_000000000000.jpg",)
    answers = {
        "random": ["Yes, there is.", "No.", "There is not a dog.", "No, there isn't.", "Yes",
                   "I see no cat. Yes."],
        "popular": ["yes", "no", "yes", "NO"],
    }  # fmt: skip
    texts = answers["popular"] + answers["random"]
    scores = score_pope(list(zip(samples, texts, strict=True)))
    # random: labels yyynnn, predicted ynnnyn -> TP 1, FN 2, TN 2, FP 1
    assert scores["random/accuracy"] == pytest.approx(0.5)
    assert scores["random/precision"] == pytest.approx(0.5)
    assert scores["random/recall"] == pytest.approx(1 / 3)
    assert scores["random/f1"] == pytest.approx(0.4)
    assert scores["random/yes_ratio"] == pytest.approx(1 / 3)
    # popular: labels ynyn, predicted ynyy -> TP 2, TN 1, FP 1
    assert scores["popular/f1"] == pytest.approx(0.8)
    assert scores["f1"] == pytest.approx(0.6)
    assert scores["accuracy"] == pytest.approx((0.5 + 0.75) / 2)


def test_pope_rejects_bad_label_and_missing_category_file(tmp_path: Path) -> None:
    root = pope_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="coco_pope_adversarial.json"):
        load_pope(root)
    path = root / "coco" / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"yes"', '"maybe"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:3: label 'maybe'"):
        load_pope(root, categories=("random",))


# ---------------------------------------------------------------- MME


def mme_root(tmp_path: Path) -> Path:
    root = tmp_path / "MME_Benchmark_release_version"
    flat = root / "existence"
    for name in ("1", "2"):
        images(flat, f"{name}.jpg")
        write(flat / f"{name}.txt", f"Is there a dog {name}?\tYes\nIs there a cat {name}?\tNo\n")
    nested = root / "artwork"
    images(nested, "images/3.png")
    write(nested / "questions_answers_YN/3.txt", "Is it a painting?\tYes\nIs it a photo?\tNo\n")
    images(root, "code_reasoning/4.png")
    write(root / "code_reasoning/4.txt", "Does it print 1?\tYes\nDoes it print 2?\tNo\n")
    return root


def test_mme_parsing_follows_eval_tool() -> None:
    assert parse_mme("Yes") == "yes"
    assert parse_mme("No, there is not.") == "no"
    assert parse_mme("I think yes") == "other"  # only the first 4 characters count


def test_mme_scores_acc_plus_and_sums(tmp_path: Path) -> None:
    root = mme_root(tmp_path)
    samples = load_mme(root, subtasks=["existence", "artwork", "code_reasoning"])
    assert [s.fields["image"] for s in samples] == [
        "existence/1.jpg", "existence/1.jpg", "existence/2.jpg", "existence/2.jpg",
        "artwork/3.png", "artwork/3.png", "code_reasoning/4.png", "code_reasoning/4.png",
    ]  # fmt: skip
    assert samples[4].images == (root / "artwork" / "images" / "3.png",)
    assert samples[0].prompt == f"Is there a dog 1?\n{SHORT_ANSWER}"
    texts = ["Yes", "No, there is not.", "yes", "Yes", "I think yes", "no", "yes", "no"]
    scores = score_mme(list(zip(samples, texts, strict=True)))
    assert scores["existence/acc"] == pytest.approx(0.75)
    assert scores["existence/acc_plus"] == pytest.approx(0.5)
    assert scores["existence/score"] == pytest.approx(125.0)
    assert scores["artwork/score"] == pytest.approx(50.0)
    assert scores["perception"] == pytest.approx(175.0)
    assert scores["cognition"] == pytest.approx(200.0)


def test_mme_needs_every_subtask_unless_told_and_names_bad_lines(tmp_path: Path) -> None:
    root = mme_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="count"):
        load_mme(root)
    bad = write(root / "existence" / "2.txt", "Is there a dog?\tYes\nno tab here\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{bad}:2: expected 'question<TAB>Yes\|No'"):
        load_mme(root, subtasks=["existence"])


# ---------------------------------------------------------------- VQA family


def test_vqa_normalisation() -> None:
    assert normalize_answer("Two dogs!") == "2 dogs"
    assert normalize_answer("The cat.") == "cat"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("red/blue") == "red blue"
    assert normalize_answer(" Yes\n") == "yes"


def test_vqa_accuracy_averages_leave_one_out_subsets() -> None:
    humans = ["red"] * 4 + ["dark red"] * 2 + ["blue"] * 3 + ["pink"]
    assert vqa_accuracy("Red", humans) == pytest.approx(1.0)  # 4 agree: 3 left in every time
    assert vqa_accuracy("Dark red.", humans) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("blue", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("pink", humans) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_accuracy("green", humans) == 0.0
    assert exact_match("The left.", ["left"]) == 1.0
    assert exact_match("right", ["left"]) == 0.0


def ten(*answers: str) -> list[dict[str, Any]]:
    assert len(answers) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
            for i, a in enumerate(answers)]  # fmt: skip


def test_vqav2_joins_questions_and_annotations(tmp_path: Path) -> None:
    root = tmp_path / "vqav2"
    questions = [{"image_id": 42, "question": "What color?", "question_id": 420},
                 {"image_id": 7, "question": "How many?", "question_id": 70}]  # fmt: skip
    annotations = [
        {"question_id": 70, "image_id": 7, "answer_type": "number", "answers": ten(*["2"] * 10)},
        {"question_id": 420, "image_id": 42, "answer_type": "other",
         "answers": ten(*["red"] * 2, *["blue"] * 8)},
    ]  # fmt: skip
    write(root / "v2_OpenEnded_mscoco_val2014_questions.json", json.dumps({"questions": questions}))
    write(root / "v2_mscoco_val2014_annotations.json", json.dumps({"annotations": annotations}))
    images(root, "val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000000007.jpg")
    samples = load_vqav2(root)
    assert [s.id for s in samples] == ["420", "70"]
    assert samples[1].answers == ("2",) * 10
    scores = score_vqa(list(zip(samples, ["Red", "two"], strict=True)))
    red = (2 * 1 / 3 + 8 * 2 / 3) / 10
    assert scores["accuracy"] == pytest.approx((red + 1.0) / 2)
    assert scores["accuracy/other"] == pytest.approx(red)
    assert scores["accuracy/number"] == pytest.approx(1.0)


def test_vqav2_question_without_annotation_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "vqav2"
    questions = [{"image_id": 42, "question": "What?", "question_id": 1}]
    write(root / "v2_OpenEnded_mscoco_val2014_questions.json", json.dumps({"questions": questions}))
    annotations = [
        {"question_id": 2, "image_id": 42, "answer_type": "x", "answers": ten(*"a" * 10)}
    ]
    write(root / "v2_mscoco_val2014_annotations.json", json.dumps({"annotations": annotations}))
    with pytest.raises(BenchmarkFormatError, match="question 1 has no annotation"):
        load_vqav2(root)


def test_textvqa_and_vizwiz(tmp_path: Path) -> None:
    root = tmp_path / "textvqa"
    data = [{"question_id": 5, "question": "What brand?", "image_id": "abc",
             "answers": ["nike"] * 3 + ["adidas"] * 7}]  # fmt: skip
    path = write(root / "TextVQA_0.5.1_val.json", json.dumps({"dataset_name": "t", "data": data}))
    images(root, "train_images/abc.jpg")
    [sample] = load_textvqa(root)
    assert score_vqa([(sample, "Nike")])["accuracy"] == pytest.approx((3 * 2 / 3 + 7) / 10)
    data.append({"question_id": 6, "question": "?", "image_id": "abc", "answers": ["x"] * 9})
    path.write_text(json.dumps({"data": data}))
    with pytest.raises(BenchmarkFormatError, match=rf"{path}: record 2: 9 answers, expected 10"):
        load_textvqa(root)

    root = tmp_path / "vizwiz"
    entries = [{"image": "VizWiz_val_00000001.jpg", "question": "What is this?",
                "answer_type": "unanswerable", "answerable": 0,
                "answers": ten(*["unanswerable"] * 9, "soup")}]  # fmt: skip
    write(root / "val.json", json.dumps(entries))
    images(root, "val/VizWiz_val_00000001.jpg")
    [sample] = load_vizwiz(root)
    assert "respond with 'Unanswerable'" in sample.prompt
    scores = score_vqa([(sample, "Unanswerable")])
    assert scores["accuracy"] == scores["accuracy/unanswerable"] == pytest.approx(1.0)


def test_gqa_exact_match_after_normalisation(tmp_path: Path) -> None:
    root = tmp_path / "gqa"
    questions = {"201": {"imageId": "n1", "question": "Which side?", "answer": "left"},
                 "202": {"imageId": "n2", "question": "What is it?", "answer": "cat"}}  # fmt: skip
    write(root / "testdev_balanced_questions.json", json.dumps(questions))
    images(root, "images/n1.jpg", "images/n2.jpg")
    samples = load_gqa(root)
    assert [s.id for s in samples] == ["201", "202"]
    assert score_gqa(list(zip(samples, ["The left.", "dog"], strict=True))) == {"accuracy": 0.5}
    (root / "images" / "n2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="n2.jpg"):
        load_gqa(root)


# ---------------------------------------------------------------- multiple choice


def test_parse_choice() -> None:
    options = ["ant", "whale", "cat"]
    assert parse_choice("B", options) == "B"
    assert parse_choice("B. whale", options) == "B"
    assert parse_choice("(C) cat", options) == "C"
    assert parse_choice("The answer is C.", options) == "C"
    assert parse_choice("Whale.", options) == "B"
    assert parse_choice("Because whales are big", options) is None
    assert parse_choice("A cat", options) is None
    assert parse_choice("E", options) is None  # only three options


def test_scienceqa_img_keeps_problems_with_images(tmp_path: Path) -> None:
    root = tmp_path / "scienceqa"
    problems = {
        "1": {"question": "Which is bigger?", "choices": ["ant", "whale", "cat"], "answer": 1,
              "hint": "A hint", "image": "image.png", "subject": "natural science"},
        "2": {"question": "Text only?", "choices": ["x", "y"], "answer": 0, "hint": "",
              "image": None},
        "3": {"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0, "hint": "",
              "image": "image.png"},
    }  # fmt: skip
    write(root / "problems.json", json.dumps(problems))
    write(root / "pid_splits.json", json.dumps({"test": ["1", "2", "3"], "train": []}))
    images(root, "images/test/1/image.png", "images/test/3/image.png")
    samples = load_scienceqa_img(root)
    assert [s.id for s in samples] == ["1", "3"]
    assert samples[0].prompt == (
        f"Context: A hint\nWhich is bigger?\nA. ant\nB. whale\nC. cat\n{OPTION_LETTER}"
    )
    assert samples[1].prompt == f"Which is red?\nA. apple\nB. sky\n{OPTION_LETTER}"
    pairs = list(zip(samples, ["B", "The answer is B."], strict=True))
    assert score_choice(pairs) == {"accuracy": 0.5}


def mmbench_tsv(tmp_path: Path, extra_row: str = "") -> Path:
    image = base64.b64encode(png((0, 0, 255))).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
    rows = (
        f"7\tWhich animal?\tLook closely.\tant\twhale\tcat\tdog\tC\tanimals\t{image}\n"
        "8\tIs it blue?\t\tyes\tno\t\t\tA\tcolors\t7\n"  # image "7": the image of row index 7
    )
    return write(tmp_path / "mmbench" / "mmbench_dev_20230712.tsv", header + rows + extra_row)


def test_mmbench_plain_and_circular(tmp_path: Path) -> None:
    path = mmbench_tsv(tmp_path)
    plain = load_mmbench(path.parent)
    assert [s.id for s in plain] == ["7", "8"]
    assert plain[0].prompt == (
        f"Look closely.\nWhich animal?\nA. ant\nB. whale\nC. cat\nD. dog\n{OPTION_LETTER}"
    )
    assert plain[1].images == (png((0, 0, 255)),)
    samples = load_mmbench(path.parent, circular=True)
    assert [s.answers[0] for s in samples] == ["C", "B", "A", "D", "A", "B"]
    assert samples[1].fields["options"] == ["whale", "cat", "dog", "ant"]
    texts = ["cat", "B", "(A)", "D.", "A", "A"]  # the last rotation of question 8 is wrong
    scores = score_choice(list(zip(samples, texts, strict=True)))
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["circular_accuracy"] == pytest.approx(0.5)


def test_mmbench_row_with_answer_outside_its_options(tmp_path: Path) -> None:
    path = mmbench_tsv(tmp_path, extra_row="9\tWhich?\t\tx\ty\t\t\tC\tc\t7\n")
    with pytest.raises(BenchmarkFormatError, match=r"row 3 \(index 9\): answer 'C'"):
        load_mmbench(path.parent)


# ---------------------------------------------------------------- RefCOCO


def refcoco_root(tmp_path: Path) -> Path:
    root = tmp_path / "refer"
    refs = [
        {"ref_id": 1, "ann_id": 10, "image_id": 5, "split": "val", "sentences": [
            {"sent_id": 100, "sent": "left dog"}, {"sent_id": 101, "sent": "the dog"},
            {"sent_id": 102, "sent": "brown dog"}]},
        {"ref_id": 2, "ann_id": 10, "image_id": 5, "split": "testA",
         "sentences": [{"sent_id": 200, "sent": "a dog"}]},
    ]  # fmt: skip
    write(root / "refcoco" / "refs(unc).p", pickle.dumps(refs, protocol=2))
    instances = {
        "images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "width": 200,
                    "height": 100}],
        "annotations": [{"id": 10, "image_id": 5, "bbox": [20, 10, 40, 30], "category_id": 1}],
    }  # fmt: skip
    write(root / "refcoco" / "instances.json", json.dumps(instances))
    images(root, "images/mscoco/images/train2014/COCO_train2014_000000000005.jpg")
    return root


def test_box_parsing_and_iou() -> None:
    # 200x100 padded to 200x200: 50 px above and below
    assert parse_box("[0.1, 0.3, 0.3, 0.45]", 200, 100) == pytest.approx((20, 10, 60, 40))
    assert parse_box("[0.1, 0.3, 0.3, 0.45]", 200, 100, pad_to_square=False) == pytest.approx(
        (20, 30, 60, 45)
    )
    assert parse_box("(60, 40), (20, 10)", 200, 100) == (20, 10, 60, 40)  # pixels, reordered
    assert parse_box("no box", 200, 100) is None
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_refcoco_precision_at_half(tmp_path: Path) -> None:
    root = refcoco_root(tmp_path)
    samples = load_refcoco(root, dataset="refcoco", split="val")
    assert [s.id for s in samples] == ["1/100", "1/101", "1/102"]
    assert samples[0].fields["box"] == (20, 10, 60, 40)
    assert samples[0].prompt.endswith("this sentence describes: left dog.")
    texts = ["[0.1, 0.3, 0.3, 0.45]", "[20, 10, 40, 40]", "I don't know"]  # IoU 1, 0.5, none
    scores = score_refcoco(list(zip(samples, texts, strict=True)))
    assert scores == pytest.approx({"precision@0.5": 1 / 3, "mean_iou": 0.5, "unparsed": 1 / 3})
    assert [s.id for s in load_benchmark("refcoco", root, split="testA")] == ["2/200"]


def test_refcoco_refuses_pickles_with_objects(tmp_path: Path) -> None:
    root = refcoco_root(tmp_path)
    write(root / "refcoco" / "refs(unc).p", pickle.dumps([Path("x")]))
    with pytest.raises(BenchmarkFormatError, match=r"refs\(unc\).p: not a refer refs pickle"):
        load_refcoco(root)


# ---------------------------------------------------------------- Visual Haystacks


def haystack_root(tmp_path: Path) -> Path:
    root = tmp_path / "vhs"
    entries = [
        {"pos_image": [f"coco/{i}n.jpg"], "neg_image": [f"coco/{i}a.jpg", f"coco/{i}b.jpg"],
         "conversations": [{"from": "human", "value": f"<image>For the image with a dog, is there a cat {i}?"},
                           {"from": "gpt", "value": answer}]}
        for i, answer in enumerate(["yes", "no", "yes"])
    ]  # fmt: skip
    write(root / "VHs_qa/VHs_full/single_needle/visual_haystack_3.json", json.dumps(entries))
    images(root, *(f"coco/{i}{k}.jpg" for i in range(3) for k in "nab"))
    return root


def test_visual_haystack_orders_images_repeatably(tmp_path: Path) -> None:
    root = haystack_root(tmp_path)
    samples = load_visual_haystack(root, haystack=3)
    again = load_visual_haystack(root, haystack=3)
    assert [s.images for s in samples] == [s.images for s in again]
    for i, sample in enumerate(samples):
        assert len(sample.images) == sample.fields["haystack_size"] == 3
        [position] = sample.fields["needle_positions"]
        assert sample.images[position] == root / "coco" / f"{i}n.jpg"
        assert sample.prompt.endswith(f"is there a cat {i}?") and "<image>" not in sample.prompt
    texts = ["Yes.", "No, it is not.", "No"]
    scores = score_visual_haystack(list(zip(samples, texts, strict=True)))
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["compliance"] == pytest.approx(1.0)
    buckets = {k: v for k, v in scores.items() if k.startswith("accuracy/position_bucket_")}
    expected: dict[str, list[float]] = {}
    for sample, right in zip(samples, [1.0, 1.0, 0.0], strict=True):
        key = f"accuracy/position_bucket_{sample.fields['needle_positions'][0]}"
        expected.setdefault(key, []).append(right)
    assert buckets == {k: sum(v) / len(v) for k, v in expected.items()}


def test_visual_haystack_answer_must_be_yes_or_no(tmp_path: Path) -> None:
    root = haystack_root(tmp_path)
    path = root / "VHs_qa/VHs_full/single_needle/visual_haystack_3.json"
    entries = json.loads(path.read_text())
    entries[1]["conversations"][1]["value"] = "maybe"
    path.write_text(json.dumps(entries))
    with pytest.raises(BenchmarkFormatError, match=rf"{path}: record 2: answer 'maybe'"):
        load_visual_haystack(root, haystack=3)


# ---------------------------------------------------------------- registry


def test_registry_names_and_lookup(tmp_path: Path) -> None:
    assert set(BENCHMARKS) == {
        "pope", "mme", "gqa", "vqav2", "textvqa", "vizwiz", "scienceqa_img", "mmbench",
        "refcoco", "refcoco+", "refcocog", "visual_haystack", "shapes",
    }  # fmt: skip
    with pytest.raises(KeyError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")
    root = pope_root(tmp_path)
    samples = load_benchmark("pope", root, categories=("random",))
    assert all(isinstance(s, Sample) for s in samples) and len(samples) == 6
    benchmark = get_benchmark("pope")
    scores = benchmark.score([(s, s.answers[0]) for s in samples])
    assert scores[benchmark.main_metric] == 1.0


def test_json_lines_record_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:2: not a JSON object"):
        read_records(path, "layout")
