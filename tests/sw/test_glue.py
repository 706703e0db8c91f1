import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from sw.glue import (TASKS, GlueDataset, GlueExample, collate, compute_metrics, get_task, glue_average,
                     load_glue_split, primary_metric, subsample)

# /work/shared/data/glue beside the repository (a `shared` symlink beside the clone in CI).
GLUE_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glue"


# --- the real files (counts and label balance from the data folder's README) ---

@pytest.mark.parametrize("task, split, positives, negatives", [
    ("cola", "train", 6023, 2528), ("cola", "dev", 721, 322),
    ("mrpc", "train", 2474, 1194), ("mrpc", "dev", 279, 129),
    ("sst2", "train", 37569, 29780), ("sst2", "dev", 444, 428),
])
def test_real_files_have_the_verified_counts_and_balance(task, split, positives, negatives):
    examples = load_glue_split(GLUE_DIR, task, split)
    assert len(examples) == positives + negatives
    assert Counter(e.label for e in examples) == {1: positives, 0: negatives}
    assert all(e.text_a for e in examples)
    assert all((e.text_b is not None) == (task == "mrpc") for e in examples)


def test_mrpc_bom_is_stripped_from_the_header():
    assert (GLUE_DIR / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    first = load_glue_split(GLUE_DIR, "MRPC", "train", limit=1)[0]
    assert first.text_a.startswith("Amrozi accused")
    assert first.text_b.startswith("Referring to him")
    assert first.label == 1


def test_cola_is_read_by_position_including_the_unterminated_last_line():
    assert not (GLUE_DIR / "CoLA" / "dev.tsv").read_bytes().endswith(b"\n")
    dev = load_glue_split(GLUE_DIR, "CoLA", "dev")
    last_line = (GLUE_DIR / "CoLA" / "dev.tsv").read_text(encoding="utf-8").split("\n")[-1].split("\t")
    assert (dev[-1].text_a, dev[-1].label) == (last_line[3], int(last_line[1]))


def test_limit_takes_the_first_rows_and_subsample_is_seeded():
    full = load_glue_split(GLUE_DIR, "sst2", "dev")
    assert load_glue_split(GLUE_DIR, "sst2", "dev", limit=5) == full[:5]
    assert load_glue_split(GLUE_DIR, "sst2", "dev", limit=0) == []
    picked = subsample(full, 50, seed=1)
    assert picked == subsample(full, 50, seed=1) != subsample(full, 50, seed=2)
    positions = [full.index(e) for e in picked]
    assert len(set(positions)) == 50 and positions == sorted(positions)
    assert subsample(full, 10_000) == full


# --- synthetic folders for the tasks not shipped here ---

def write_tsv(root: Path, folder: str, split: str, lines: list[str], bom: bool = False) -> Path:
    path = root / folder / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rte_pairs_and_string_labels(tmp_path):
    # An unbalanced quote must not swallow the following lines (QUOTE_NONE).
    write_tsv(tmp_path, "RTE", "train", [
        "index\tsentence1\tsentence2\tlabel",
        '0\tHe said "hello.\tHe spoke.\tentailment',
        "1\tIt rained.\tIt was dry.\tnot_entailment",
    ])
    assert load_glue_split(tmp_path, "RTE", "train") == [
        GlueExample('He said "hello.', "He spoke.", 0),
        GlueExample("It rained.", "It was dry.", 1),
    ]


def test_stsb_is_regression_with_float_scores(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write_tsv(tmp_path, "STS-B", "dev", [
        header,
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man plays.\tA man is playing.\t5.000",
        "1\tmain-news\theadlines\t2015\t0001\tnone\tnone\tCats sleep.\tStocks fell.\t0.4",
    ])
    examples = load_glue_split(tmp_path, "STS-B", "dev")
    assert [(e.text_a, e.text_b) for e in examples] == [("A man plays.", "A man is playing."),
                                                        ("Cats sleep.", "Stocks fell.")]
    assert [e.label for e in examples] == [5.0, 0.4]
    assert all(isinstance(e.label, float) for e in examples)
    assert get_task("STS-B").is_regression and get_task("stsb").labels is None


def test_mnli_reads_gold_label_from_both_dev_splits(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tlabel2\tgold_label"
    for split, label in (("dev_matched", "contradiction"), ("dev_mismatched", "neutral")):
        write_tsv(tmp_path, "MNLI", split, [
            header,
            f"0\t1\t1e\tfiction\tPremise {split}.\tHypothesis.\tneutral\t{label}\t{label}",
            "1\t2\t2e\tslate\tThe sun is up.\tIt is day.\tentailment\tentailment\tentailment",
        ])
    matched = load_glue_split(tmp_path, "mnli", "dev_matched")
    mismatched = load_glue_split(tmp_path, "MNLI", "dev_mismatched")
    assert [(e.text_a, e.label) for e in matched] == [("Premise dev_matched.", 2), ("The sun is up.", 0)]
    assert [(e.text_a, e.label) for e in mismatched] == [("Premise dev_mismatched.", 1), ("The sun is up.", 0)]
    with pytest.raises(ValueError, match="dev_matched, dev_mismatched"):
        load_glue_split(tmp_path, "mnli", "dev")


def test_task_names_and_aliases():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    for spec in TASKS.values():
        assert get_task(spec.folder) is spec
    assert get_task("SST-2") is get_task("sst_2") is TASKS["sst2"]
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'.*cola, sst2"):
        get_task("squad")


# --- bad input ---

def test_row_with_a_missing_column_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path, "RTE", "dev", [
        "index\tsentence1\tsentence2\tlabel",
        "0\tA.\tB.\tentailment",
        "1\tOnly one sentence.\tentailment",
    ])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}, line 3: expected 4 .* found 3"):
        load_glue_split(tmp_path, "rte", "dev")


def test_cola_row_with_an_extra_tab_fails(tmp_path):
    path = write_tsv(tmp_path, "CoLA", "train", ["gj04\t1\t\tFine.", "gj04\t0\t*\tBroken\tsentence."])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}, line 2: expected 4 .* found 5"):
        load_glue_split(tmp_path, "cola", "train")


def test_unknown_label_and_bad_score_fail(tmp_path):
    write_tsv(tmp_path, "QNLI", "train", ["index\tquestion\tsentence\tlabel", "0\tWhy?\tBecause.\tmaybe"])
    with pytest.raises(ValueError, match=r"QNLI.train\.tsv, line 2: unknown QNLI label 'maybe'"):
        load_glue_split(tmp_path, "qnli", "train")
    write_tsv(tmp_path, "STS-B", "train", ["sentence1\tsentence2\tscore", "A.\tB.\thigh"])
    with pytest.raises(ValueError, match=r"line 2: score 'high' of STS-B is not a finite number"):
        load_glue_split(tmp_path, "stsb", "train")


def test_missing_file_and_missing_header_column_fail(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"WNLI.dev\.tsv"):
        load_glue_split(tmp_path, "wnli", "dev")
    path = write_tsv(tmp_path, "QQP", "train", ["id\tqid1\tqid2\tquestion1\tquestion2", "0\t1\t2\tA?\tB?"])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: header has no column\(s\) \['is_duplicate'\]"):
        load_glue_split(tmp_path, "qqp", "train")


# --- metrics against first-principles computations ---

def binary_counts(y_true, y_pred):
    tp = np.sum((y_pred == 1) & (y_true == 1))
    tn = np.sum((y_pred == 0) & (y_true == 0))
    fp = np.sum((y_pred == 1) & (y_true == 0))
    fn = np.sum((y_pred == 0) & (y_true == 1))
    return tp, tn, fp, fn


def pearson(x, y):
    x, y = x - x.mean(), y - y.mean()
    return np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y))


@pytest.mark.parametrize("seed", range(3))
def test_mcc_matches_the_confusion_matrix_formula(seed):
    rng = np.random.default_rng(seed)
    labels, predictions = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp, tn, fp, fn = binary_counts(labels, predictions)
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert compute_metrics("cola", predictions, labels) == pytest.approx({"mcc": 100 * mcc})
    assert primary_metric("CoLA") == "mcc"


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_and_accuracy_match_the_counts(task):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    logits = rng.normal(size=(300, 2))
    predictions = logits.argmax(axis=1)
    tp, tn, fp, fn = binary_counts(labels, predictions)
    expected = {"f1": 100 * 2 * tp / (2 * tp + fp + fn), "accuracy": 100 * (tp + tn) / 300}
    assert compute_metrics(task, predictions, labels) == pytest.approx(expected)
    # Logits and tensors give the same scores as class ids.
    assert compute_metrics(task, torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(expected)
    assert primary_metric(task) == "f1"


def test_stsb_spearman_is_pearson_of_ranks():
    rng = np.random.default_rng(3)
    labels = rng.uniform(0, 5, 100)
    predictions = labels + rng.normal(scale=1.5, size=100)
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # no ties among random floats
    scores = compute_metrics("sts-b", predictions[:, None], labels)  # [N, 1] regression head output
    assert scores == pytest.approx({"spearman": 100 * pearson(rank(predictions), rank(labels)),
                                    "pearson": 100 * pearson(predictions, labels)})
    assert primary_metric("stsb") == "spearman"


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte", "wnli"])
def test_accuracy_tasks(task):
    rng = np.random.default_rng(11)
    classes = len(get_task(task).labels)
    labels, logits = rng.integers(0, classes, 150), rng.normal(size=(150, classes))
    expected = 100 * np.mean(logits.argmax(axis=1) == labels)
    assert compute_metrics(task, logits, labels) == pytest.approx({"accuracy": expected})
    assert primary_metric(task) == "accuracy"


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics("sst2", [0, 1, 1], [0, 1])


TABLE_1_BASELINE = {"mnli-m": 84.5, "mnli-mm": 84.8, "sst2": 92.5, "qnli": 91.6, "cola": 56.7, "stsb": 89.6,
                    "mrpc": 91.7, "rte": 70.7}


def test_glue_average_reproduces_the_papers_table_1():
    assert round(glue_average(TABLE_1_BASELINE), 1) == 81.8
    assert glue_average(TABLE_1_BASELINE, kind="arithmetic") == pytest.approx(82.7625)
    values = np.array(list(TABLE_1_BASELINE.values()))
    assert glue_average(TABLE_1_BASELINE) == pytest.approx(np.prod(values) ** (1 / len(values)))


def test_glue_average_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        glue_average({"cola": -3.0, "sst2": 90.0})
    with pytest.raises(ValueError, match="kind"):
        glue_average(TABLE_1_BASELINE, kind="harmonic")
    with pytest.raises(ValueError, match="no scores"):
        glue_average({})


# --- tokenized dataset and dynamic padding ---

@pytest.fixture
def tokenizer(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    assert tok.convert_tokens_to_ids("cat") == 6 and tok.pad_token_id == 0  # the vocabulary was really read
    return tok


def test_single_sentences_pad_to_the_longest_in_the_batch(tokenizer):
    examples = [GlueExample("the cat sat on the mat .", None, 1), GlueExample("a dog", None, 0)]
    dataset = GlueDataset(examples, tokenizer)
    assert len(dataset) == 2
    assert dataset[1]["input_ids"].tolist() == [2, 10, 11, 3]  # unpadded: [CLS] a dog [SEP]
    batch = collate([dataset[0], dataset[1]], tokenizer.pad_token_id)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 8, 5, 9, 13, 3], [2, 10, 11, 3, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 4 + [0] * 5]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    # The longest in a batch sets its width, not max_length.
    assert collate([dataset[1]], tokenizer.pad_token_id)["input_ids"].shape == (1, 4)


def test_pairs_get_token_types_and_regression_gets_float_labels(tokenizer):
    examples = [GlueExample("the cat", "sat on the mat", 4.5), GlueExample("a dog ran", "the cat", 1.0)]
    dataset = GlueDataset(examples, tokenizer, max_length=32, is_regression=True)
    batch = collate([dataset[0], dataset[1]], tokenizer.pad_token_id)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3, 7, 8, 5, 9, 3], [2, 10, 11, 12, 3, 5, 6, 3, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1, 0]]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [4.5, 1.0]


def test_dataset_truncates_and_checks_labels(tokenizer):
    long = GlueExample(" ".join(["the cat"] * 20), None, 0)
    assert len(GlueDataset([long], tokenizer, max_length=8)[0]["input_ids"]) == 8
    with pytest.raises(ValueError, match="is_regression=True"):
        GlueDataset([GlueExample("the cat", None, 0.5)], tokenizer)
    with pytest.raises(ValueError, match="mix single sentences and sentence pairs"):
        GlueDataset([GlueExample("a", None, 0), GlueExample("a", "b", 1)], tokenizer)


def test_real_cola_dev_through_a_dataloader(tokenizer):
    examples = load_glue_split(GLUE_DIR, "cola", "dev", limit=16)
    loader = torch.utils.data.DataLoader(GlueDataset(examples, tokenizer), batch_size=8,
                                         collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
    batches = list(loader)
    assert [b["labels"].tolist() for b in batches] == [[e.label for e in examples[:8]], [e.label for e in examples[8:]]]
    for b in batches:
        lengths = b["attention_mask"].sum(dim=1)
        assert b["input_ids"].shape[1] == lengths.max()
