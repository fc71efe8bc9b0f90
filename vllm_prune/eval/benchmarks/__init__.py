"""Benchmark loaders and metrics over local copies of the official releases.

Each loader reads a folder the user downloaded (the layouts of LLaVA's
docs/Evaluation.md) and returns ``Sample`` records (vllm_prune.eval.sample): id,
images, the question, the prompt to send (with LLaVA-1.5's answer-format
instruction), reference answers, and format-specific ``fields``. Each metric scores a
list of ``(sample, answer text)`` pairs. A malformed file stops the load with
``BenchmarkFormatError`` naming the file and line; a missing file or image with
``FileNotFoundError`` naming the expected layout. Nothing is skipped silently.

Names (``load_benchmark(name, root, **options)``), layout of ROOT, headline metric:

  pope           ROOT/coco/coco_pope_{adversarial,popular,random}.json (JSON Lines
                 from POPE's output/coco), ROOT/val2014/COCO_val2014_*.jpg.
                 f1 (mean over categories); also accuracy, precision, recall, yes_ratio.
  mme            ROOT = MME_Benchmark_release_version/: 14 subtask folders, each
                 images/ + questions_answers_YN/ or flat; NAME.txt = lines
                 "question<TAB>Yes|No" about NAME.jpg/.png. perception (max 2000),
                 cognition (max 800), per subtask acc, acc_plus, score.
  gqa            ROOT/testdev_balanced_questions.json, ROOT/images/<imageId>.jpg
                 (``split=``). accuracy: exact match after VQA normalisation.
  vqav2          ROOT/v2_OpenEnded_mscoco_val2014_questions.json,
                 ROOT/v2_mscoco_val2014_annotations.json, ROOT/val2014/*.jpg
                 (test-dev needs the evaluation server). accuracy: VQA accuracy.
  textvqa        ROOT/TextVQA_0.5.1_val.json, ROOT/train_images/<image_id>.jpg.
                 accuracy: VQA accuracy (no OCR tokens in the prompt).
  vizwiz         ROOT/val.json (from Annotations.zip), ROOT/val/*.jpg (test has no
                 answers). accuracy: VQA accuracy, also per answer type.
  scienceqa_img  ROOT/problems.json, ROOT/pid_splits.json,
                 ROOT/images/test/<pid>/image.png. accuracy on problems with an image.
  mmbench        ROOT/mmbench_dev_20230712.tsv (images inside). accuracy;
                 ``circular=True`` rotates the options and adds circular_accuracy.
  refcoco, refcoco+, refcocog
                 ROOT/<name>/refs(unc).p (refcocog: refs(umd).p) and instances.json,
                 ROOT/images/mscoco/images/train2014/*.jpg (the refer toolkit's data/).
                 precision@0.5 (IoU > 0.5), mean_iou, unparsed.
  visual_haystack
                 ROOT/VHs_qa/VHs_full/single_needle/visual_haystack_10.json
                 (``haystack=``, ``mode=``, ``variant=``), images under ROOT (coco/...).
                 accuracy, compliance, accuracy per needle position bucket.
  shapes         ROOT/test.jsonl + ROOT/images/*.png written by
                 ``vllm_prune.eval.shapes.write_split``. accuracy, per type and size.
"""

from vllm_prune.eval.benchmarks.registry import (
    BENCHMARKS,
    Benchmark,
    get_benchmark,
    load_benchmark,
    score_benchmark,
)
from vllm_prune.eval.files import BenchmarkFormatError
from vllm_prune.eval.sample import Prediction, Sample, Scores

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFormatError",
    "Prediction",
    "Sample",
    "Scores",
    "get_benchmark",
    "load_benchmark",
    "score_benchmark",
]
