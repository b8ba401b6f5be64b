"""Reading local files with file:line locations, and the shipped data files."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from llama32_fixtures import write_reasonmed_json

from medtune.config import SAMPLE_DATA, DataConfig, load_config
from medtune.data.loading import (
    REASONMED_HUB_ID,
    builtin_path,
    check_reasonmed_subset,
    iter_hub_records,
    iter_json,
    iter_jsonl,
    iter_parquet,
    iter_records,
    load_hub_dataset,
    resolve_files,
)
from medtune.errors import DataError

RECORD = {"instruction": "Q?", "output": "A."}


def test_jsonl_locations_skip_blank_lines_and_flag_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(RECORD).encode() + b"\n\n"  # BOM, then a blank line
        + b'{"instruction": "\xff"}\n'
        + b"[1, 2]\n"
        + b"{not json\n"
        + json.dumps(RECORD).encode()  # no final newline
    )
    rows = list(iter_jsonl(path))
    assert [r.location for r in rows] == [f"{path}:{n}" for n in (1, 3, 4, 5, 6)]
    assert rows[0].record == RECORD and rows[-1].record == RECORD
    assert [r.problem.reason if r.problem else None for r in rows] == [
        None, "invalid_utf8", "invalid_json", "invalid_json", None
    ]


def test_invalid_json_on_a_line_reports_its_real_column(tmp_path):
    path = tmp_path / "d.jsonl"
    cut = '{"instruction": "Q", "output": '  # 31 characters: the value is missing at column 32
    path.write_text(json.dumps(RECORD) + "\n" + cut + "\n" + '{"instruction" "Q"}\r\n')
    rows = list(iter_jsonl(path))
    assert [r.location for r in rows] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert rows[1].problem.describe() == "Expecting value at column 32 (the line ends early)"
    assert rows[2].problem.describe() == "Expecting ':' delimiter at column 16"  # CRLF line end, no shift


def test_empty_data_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text("\n  \n")
    (tmp_path / "data" / "ok.jsonl").write_text(json.dumps(RECORD) + "\n")
    with pytest.raises(DataError, match=r"^data/x\.jsonl: empty file, no records"):
        list(iter_records(DataConfig(files=["data/ok.jsonl", "data/x.jsonl"])))
    (tmp_path / "data" / "y.json").write_text(" [ ]\n")
    with pytest.raises(DataError, match=r"^data/y\.json: an empty JSON array, no records"):
        list(iter_records(DataConfig(files=["data/y.json"])))


def test_json_array_names_the_line_and_element_index_of_each_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([RECORD, RECORD, "text"], indent=2))
    rows = list(iter_json(path))
    assert len(rows) == 3
    lines = path.read_text().splitlines()
    for index, row in enumerate(rows):
        where, element = row.location.split(" (element ")
        assert element == f"[{index}])"
        assert lines[int(where.rsplit(":", 1)[1]) - 1].strip() in ("{", '"text"')
    assert rows[2].problem.reason == "invalid_json"


def test_a_bad_record_in_a_json_array_is_reported_with_its_element_index(tmp_path):
    from medtune.data.formats import FileFormats
    from medtune.data.validation import RecordProblem, Tally, reject

    path = tmp_path / "d.json"
    path.write_text(json.dumps([RECORD, RECORD, {"instruction": "Q3?", "output": 3}, RECORD], indent=2))
    formats = FileFormats("auto")
    with pytest.raises(DataError) as caught:
        for row in iter_json(path):
            try:
                formats.normalise(row.record, row.source, row.location)
            except RecordProblem as problem:
                reject(problem, row.location, "error", Tally())
    assert str(caught.value).startswith(
        f"{path}:10 (element [2]): a field has the wrong type: field 'output': expected str, got int"
    )


def test_json_array_with_a_bad_byte_flags_only_that_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"instruction": "ok", "output": "A"},\n {"instruction": "bad \xff", "output": "A"}]')
    rows = list(iter_json(path))
    assert rows[0].problem is None
    assert rows[1].problem.reason == "invalid_utf8" and rows[1].location.endswith(":2 (element [1])")


def test_broken_json_array_stops_with_line_column_and_element(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"instruction": "Q"},\n{"instruction": \n]')
    with pytest.raises(DataError, match=r"d\.json:4:1: not valid JSON \(Expecting value\) in element \[1\] of the array"):
        list(iter_json(path))
    cut = tmp_path / "cut.json"
    cut.write_text('[\n{"instruction": "Q"},\n{"instruction": \n')  # the file ends inside element [1]
    with pytest.raises(DataError, match=r"cut\.json:3:16: not valid JSON \(Expecting value: the file ends early\) in element \[1\]"):
        list(iter_json(cut))
    unclosed = tmp_path / "unclosed.json"
    unclosed.write_text('[\n{"instruction": "Q"}\n')
    with pytest.raises(DataError, match=r"unclosed\.json:2: not valid JSON \(expected ',' or '\]' after element \[0\] of the array; the file ends\)"):
        list(iter_json(unclosed))


def test_json_lines_in_a_json_file_and_single_object(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n")
    assert [r.location.rsplit(":", 1)[1] for r in iter_json(lines)] == ["1", "2"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(RECORD))
    assert [r.record for r in iter_json(single)] == [RECORD]


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([RECORD, {"instruction": "Q2?", "output": "B."}]), path)
    rows = list(iter_parquet(path))
    assert [r.location for r in rows] == [f"{path}:row 1", f"{path}:row 2"]
    assert rows[1].record == {"instruction": "Q2?", "output": "B."}


def test_resolve_files_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_files([str(tmp_path / "missing.jsonl")])
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported extension"):
        resolve_files([str(tmp_path / "d.csv")])
    with pytest.raises(DataError, match="unknown built-in"):
        resolve_files(["builtin:nope"])


def test_shipped_sample_is_reasonmed_with_a_final_answer_line():
    path = builtin_path(SAMPLE_DATA)
    rows = list(iter_records(DataConfig(files=[SAMPLE_DATA])))
    assert len(rows) >= 60 and all(r.problem is None for r in rows)
    letters = []
    for row in rows:
        record = row.record
        assert set(record) == {"instruction", "input", "output"}
        assert [line[:3] for line in record["input"].splitlines()] == ["A. ", "B. ", "C. ", "D. "]
        last = record["output"].splitlines()[-1]
        assert last in {f"The answer is {x}." for x in "ABCD"}, last
        assert record["output"].count("The answer is") == 1  # one unambiguous answer line
        letters.append(last[-2])
    assert min(letters.count(x) for x in "ABCD") >= 10  # answers spread over A-D
    seed = [r.record for r in rows if "neck stiffness" in r.record["instruction"]]
    assert seed and "B. Meningitis" in seed[0]["input"] and seed[0]["output"].endswith("The answer is B.")
    assert str(path).endswith("reasonmed_sample.jsonl")


def _reasonmed_repo(folder):
    """A local folder laid out as ReasonMed's hub repository: three pretty-printed JSON arrays."""
    folder.mkdir()
    for subset in ("ReasonMed", "CoTMed", "ResponseMed"):
        write_reasonmed_json(folder / f"{subset}.json", [
            {"instruction": f"Q{i}: which vitamin deficiency causes scurvy?", "input": "A. A\nB. C" if i % 2 else "",
             "output": f"{subset} reply {i}. The answer is B."}
            for i in range(3)
        ])
    return folder


@pytest.mark.parametrize("subset", ["ReasonMed.json", "CoTMed.json", "ResponseMed.json"])
def test_each_reasonmed_subset_loads_from_the_hub_layout_alone(tmp_path, subset):
    """The hub path (datasets.load_dataset on the repository with data_files) on a local copy of its layout."""
    repo = _reasonmed_repo(tmp_path / "ReasonMed")
    text = (repo / subset).read_text()
    assert text.startswith("[\n    {") and not text.splitlines()[1].startswith("{")  # an array, not JSON lines
    data = DataConfig(dataset=str(repo), data_files=[subset], format="reasonmed")
    records = list(iter_hub_records(data, load_hub_dataset(data)))
    assert [r.record["output"] for r in records] == [f"{subset.removesuffix('.json')} reply {i}. The answer is B."
                                                     for i in range(3)]
    assert set(records[0].record) == {"instruction", "input", "output"}


def test_a_reasonmed_subset_as_a_local_json_array(tmp_path):
    repo = _reasonmed_repo(tmp_path / "ReasonMed")
    records = list(iter_records(DataConfig(files=[str(repo / "CoTMed.json")])))
    assert [r.location for r in records] == [f"{repo / 'CoTMed.json'}:{line} (element [{i}])"
                                             for i, line in enumerate((2, 7, 12))]
    assert records[1].record["input"] == "A. A\nB. C"


def test_reasonmed_on_the_hub_needs_one_named_subset():
    with pytest.raises(DataError, match=r"three subsets.*data_files: \[ReasonMed.json\]"):
        check_reasonmed_subset(DataConfig(dataset=REASONMED_HUB_ID))
    with pytest.raises(DataError, match="ReasonMed.jsonl is not a file of"):
        check_reasonmed_subset(DataConfig(dataset=REASONMED_HUB_ID, data_files=["ReasonMed.jsonl"]))
    for subset in ("ReasonMed.json", "CoTMed.json", "ResponseMed.json"):
        check_reasonmed_subset(DataConfig(dataset=REASONMED_HUB_ID, data_files=[subset]))


def test_shipped_llama_configs_train_on_the_reasonmed_subset():
    """Both Llama configs use ReasonMed.json: reasoning and a concise answer, the paper's best recipe."""
    for name in ("llama3.2-1b-reasonmed.yaml", "llama3.1-8b-reasonmed.yaml"):
        data = load_config(REPO / "configs" / name).data
        assert (data.dataset, data.data_files, data.format) == ("lingshu-medical-mllm/ReasonMed", ["ReasonMed.json"],
                                                                "reasonmed")
