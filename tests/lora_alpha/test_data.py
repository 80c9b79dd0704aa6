import pytest

from lora_alpha.train.data import CausalLMDataModule, RottenTomatoesDataModule, TextClassificationDataModule, pad_collate
from lora_alpha.train.errors import UsageError
from tests.lora_alpha.app_helpers import tokenizer_path, write_csv, write_jsonl


def test_rotten_tomatoes_is_split_by_movie():
    dm = RottenTomatoesDataModule(train_size=None)
    splits = dm.read_splits()
    total = sum(len(v) for v in splits.values())
    assert total == 12752  # unique fresh/rotten snippets
    texts = {k: {t for t, _ in v} for k, v in splits.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["val"])
    assert {y for _, y in splits["train"]} == {0, 1}
    # Movies never cross splits: re-read the raw file and check membership.
    import bz2
    import csv

    movie_of = {}
    with bz2.open(dm.path, "rt") as fh:
        for row in csv.DictReader(fh):
            movie_of.setdefault(row["text"].strip(), row["movie_name"])
    movies = {k: {movie_of[t] for t in v} for k, v in texts.items()}
    assert not (movies["train"] & movies["test"]) and not (movies["train"] & movies["val"]) and not (movies["val"] & movies["test"])
    small = RottenTomatoesDataModule(train_size=40, val_size=8, test_size=8, batch_size=16)
    batch = next(iter(small.train_dataloader()))
    assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].shape[1] <= 64
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_pad_collate_masks_padding():
    batch = pad_collate(0)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_text_classification_csv_and_jsonl(tmp_path):
    dm = TextClassificationDataModule(tokenizer_path(), write_csv(tmp_path / "d.csv"))
    dm.setup()
    assert dm.labels == ["neg", "pos"] and len(dm.splits["train"]) + len(dm.splits["val"]) == 24
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}] * 5
    dm = TextClassificationDataModule(tokenizer_path(), write_jsonl(tmp_path / "d.jsonl", rows))
    assert dm.labels == ["0", "1"] and dm.num_labels == 2


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("text,label\n", "has no rows"),
    ("sentence,label\nhi,1\nho,0\n", r"lacks column\(s\) \['text'\].*columns are \['label', 'sentence'\]"),
    ("text,label\nhi,1\nho,\n", r"d.csv:3 has no label in column .label. \(got .."),
    ("text,label\nhi,1\n  ,0\n", r"d.csv:3 has no text in column 'text' \(got '  '\); every row needs text"),
    ("text,label\nhi,1\nho,1\n", "single label"),
])
def test_text_classification_bad_files(tmp_path, content, match):
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=match):
        TextClassificationDataModule(tokenizer_path(), path)


def test_unmappable_labels_encoding_and_bad_json(tmp_path):
    train = write_csv(tmp_path / "t.csv")
    val = tmp_path / "v.csv"
    val.write_text("text,label\nfine,maybe\n")
    with pytest.raises(UsageError, match=r"val labels \['maybe'\] do not occur"):
        TextClassificationDataModule(tokenizer_path(), train, val_file=val)
    latin = tmp_path / "l.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\nx,0\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8"):
        TextClassificationDataModule(tokenizer_path(), latin)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(UsageError, match=r"b.jsonl:2 is not valid JSON"):
        TextClassificationDataModule(tokenizer_path(), bad)


def test_causal_lm_masks_the_prompt(tmp_path):
    rows = [{"prompt": "question: two plus two?", "completion": " four"}, {"text": "plain text to model"}] * 3
    dm = CausalLMDataModule(tokenizer_path(), write_jsonl(tmp_path / "c.jsonl", rows), batch_size=2)
    dm.setup()
    tok = dm.load_tokenizer()
    prompt_len = len(tok("question: two plus two?")["input_ids"])
    pc = next(r for r in dm.splits["train"].rows + dm.splits["val"].rows if r["labels"][0] == -100)
    assert pc["labels"][:prompt_len] == [-100] * prompt_len and all(y != -100 for y in pc["labels"][prompt_len:])
    with pytest.raises(UsageError, match=r"record 1 needs a string 'text'"):
        CausalLMDataModule(tokenizer_path(), write_jsonl(tmp_path / "x.jsonl", [{"prompt": "only"}]))


@pytest.mark.parametrize("content, match", [
    ('text,label\n"a, b",1\nc, d,0\n', r"d.csv:3 has more fields than the header's 2"),
    ('text,label,text\ngood,1,\nbad,0,\n', r"d.csv: the header names column\(s\) \['text'\] more than once"),
    ('text,label\nhi,1\n"x' + "x" * 200_000 + '",1\ny,0\n', r"d.csv is not valid CSV after line \d+ \(field larger than field limit"),
])
def test_malformed_csv_lines_name_the_line(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(UsageError, match=match):
        TextClassificationDataModule(tokenizer_path(), path)


def test_huge_labels_are_labels(tmp_path):
    """Integers of thousands of digits (Python refuses int() of them) and megabyte-long label strings."""
    huge = "9" * 5000
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([huge, "1", huge, "1", "-3", "z" * 100_000])]
    dm = TextClassificationDataModule(tokenizer_path(), write_jsonl(tmp_path / "d.jsonl", rows))
    assert dm.labels[:2] == ["-3", "1"] and set(dm.labels[2:]) == {huge, "z" * 100_000}
    dm.setup()
    assert sorted({int(r["labels"]) for split in dm.splits.values() for r in split.rows}) <= [0, 1, 2, 3]


def test_integer_valued_labels_are_one_class_and_missing_labels_name_the_line(tmp_path):
    from lora_alpha.train.data import TextClassificationDataModule
    from tests.lora_alpha.app_helpers import tokenizer_path

    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,label\na,0\nb,0.0\nc,1\nd,1.00\ne, 1 \n")
    dm = TextClassificationDataModule(tokenizer_path(), csv_path)
    assert dm.labels == ["0", "1"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1.0}\n{"text": "c", "label": 0.0}\n')
    assert TextClassificationDataModule(tokenizer_path(), jsonl).labels == ["0", "1"]
    for content, line, shown in (('{"text": "a", "label": 0}\n\n{"text": "b", "label": null}\n', 3, "None"),
                                 ('{"text": "a", "label": 0}\n{"text": "b", "label": NaN}\n', 2, "nan")):
        jsonl.write_text(content)
        with pytest.raises(UsageError, match=rf"d.jsonl:{line} has no label in column 'label' \(got {shown}\)"):
            TextClassificationDataModule(tokenizer_path(), jsonl)
    csv_path.write_text("text,label\na,0\nb,NaN\n")
    with pytest.raises(UsageError, match=r"d.csv:3 has no label"):
        TextClassificationDataModule(tokenizer_path(), csv_path)
    jsonl.write_text('{"text": "a", "label": 0}\n{"text": null, "label": 1}\n')  # not the word "None"
    with pytest.raises(UsageError, match=r"d.jsonl:2 has no text in column 'text' \(got None\)"):
        TextClassificationDataModule(tokenizer_path(), jsonl)


def test_sizes_cap_file_splits_and_causal_lm_takes_a_test_file(tmp_path):
    import json

    from lora_alpha.train.data import CausalLMDataModule, TextClassificationDataModule
    from tests.lora_alpha.app_helpers import tokenizer_path, write_csv

    write_csv(tmp_path / "d.csv", n=40)
    dm = TextClassificationDataModule(tokenizer_path(), tmp_path / "d.csv", train_size=5, eval_size=2)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 5, "val": 2, "test": 2}
    lines = "\n".join(json.dumps({"text": f"line number {i} of the play"}) for i in range(20))
    (tmp_path / "lm.jsonl").write_text(lines)
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "the test line"}) + "\n")
    lm = CausalLMDataModule(tokenizer_path(), tmp_path / "lm.jsonl", test_file=tmp_path / "t.jsonl", train_size=7)
    lm.setup()
    assert len(lm.splits["train"]) == 7 and len(lm.splits["test"]) == 1 and len(lm.splits["val"]) == 2


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    """Spreadsheet exports start with a byte-order mark; it is not part of the first column's name."""
    from lora_alpha.train.data import read_records

    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\nhello,1\nbye,0\n".encode("utf-8"))
    rows = read_records(path, ["text", "label"])
    assert [r["text"] for r in rows] == ["hello", "bye"]


@pytest.mark.parametrize("line, match", [
    ('{"text": "b", "label": ' + "9" * 5000 + "}", r"d.jsonl:2 holds an integer of more than \d+ digits.*JSON string"),
    ("[" * 100_000, r"d.jsonl:2 nests JSON arrays or objects too deeply"),
])
def test_json_lines_past_the_parsers_limits_name_the_file_and_line(tmp_path, line, match):
    """Python's int conversion limit (a ValueError) and deep nesting (a RecursionError) are one UsageError."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 0}\n' + line + "\n")
    with pytest.raises(UsageError, match=match):
        TextClassificationDataModule(tokenizer_path(), path)


def test_the_same_column_for_text_and_label_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"text column and the label column are both 'label'.*two different columns"):
        TextClassificationDataModule(tokenizer_path(), write_csv(tmp_path / "d.csv"), text_column="label",
                                     label_column="label")


@pytest.mark.parametrize("row, match", [
    ({"text": "c", "label": True}, r"d.jsonl:3: label column 'label' holds the JSON boolean true; booleans are not labels"),
    ({"text": "c", "label": False}, r"d.jsonl:3: label column 'label' holds the JSON boolean false"),
    ({"text": True, "label": 1}, r"d.jsonl:3: text column 'text' holds the JSON boolean true; text must be a string"),
    ({"text": 3.5, "label": 1}, r"d.jsonl:3: text column 'text' holds the JSON number 3.5; text must be a string"),
    ({"text": ["a", "b"], "label": 1}, r"d.jsonl:3: text column 'text' holds the JSON array \[\"a\", \"b\"\]"),
    ({"text": {"a": 1}, "label": 1}, r"d.jsonl:3: text column 'text' holds the JSON object"),
])
def test_booleans_as_labels_and_text_that_is_not_a_string_are_refused_with_the_line(tmp_path, row, match):
    """true/false would have become classes apart from 1/0, and JSON true would have trained as the word 'True'."""
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, row, {"text": "d", "label": 0}]
    with pytest.raises(UsageError, match=match):
        TextClassificationDataModule(tokenizer_path(), write_jsonl(tmp_path / "d.jsonl", rows))


@pytest.mark.parametrize("rows, match", [
    ([{"text": " "}, {"text": ""}] * 5, r"c.jsonl:1 has no text in 'text' \(got text=' '\); every record needs text"),
    ([{"text": "fine"}, {"text": "\n\t"}], r"c.jsonl:2 has no text in 'text'"),
    ([{"text": "fine"}, {"prompt": " ", "completion": ""}], r"c.jsonl:2 has no text in 'prompt' or 'completion'"),
])
def test_causal_lm_refuses_blank_text_with_the_line(tmp_path, rows, match):
    """All-blank text used to train on the tokenizer's special tokens alone (and report a low loss)."""
    with pytest.raises(UsageError, match=match):
        CausalLMDataModule(tokenizer_path(), write_jsonl(tmp_path / "c.jsonl", rows))
    ok = [{"text": "some text"}, {"prompt": "", "completion": " an answer"}, {"prompt": "q?", "completion": ""}]
    CausalLMDataModule(tokenizer_path(), write_jsonl(tmp_path / "ok.jsonl", ok))  # a blank part of a pair is allowed


def test_a_training_split_left_with_one_label_is_refused(tmp_path):
    """Q27 of the sixth review: 2 rows, one per class; the 10% held out leaves one class to train on."""
    two = tmp_path / "two.csv"
    two.write_text("text,label\ngood,pos\nbad,neg\n")
    dm = TextClassificationDataModule(tokenizer_path(), two)
    with pytest.raises(UsageError, match=r"training split has a single label \['(neg|pos)'\] \(1 training row\(s\), "
                                         r"after 10% of the file was held out.*labels \['neg', 'pos'\]"):
        dm.setup()
    sorted_rows = tmp_path / "sorted.csv"
    sorted_rows.write_text("text,label\n" + "".join(f"t{i},{'a' if i < 10 else 'b'}\n" for i in range(20)))
    val = tmp_path / "v.csv"
    val.write_text("text,label\nx,a\ny,b\n")
    dm = TextClassificationDataModule(tokenizer_path(), sorted_rows, val_file=val, train_size=4)
    with pytest.raises(UsageError, match=r"single label \['a'\] \(4 training row\(s\), within the first 4 "
                                         r"\(--train-size\)\)"):
        dm.setup()
    dm = TextClassificationDataModule(tokenizer_path(), sorted_rows, val_file=val, train_size=11)  # both: trains
    dm.setup()
    assert len(dm.splits["train"]) == 11
