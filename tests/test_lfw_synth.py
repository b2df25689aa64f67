"""`retrieve synth --preset lfw`: embeddings in the LFW layout and an official-format pairs file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.cli import run
from retrieval.data.lfw_synth import LFW, LfwShape, _power_law_counts, default_pairs_path, generate_lfw
from retrieval.data.store import read_embeddings


@pytest.fixture(scope="module")
def lfw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lfw")
    assert run(["synth", "--preset", "lfw", "--seed", "0", "--out", str(folder / "lfw.parquet")]) == 0
    return folder / "lfw.parquet"


def parse(pairs_path: Path) -> tuple[str, list[list[str]]]:
    header, *lines = pairs_path.read_text().splitlines()
    return header, [line.split("\t") for line in lines]


def test_embeddings_have_the_lfw_layout_and_shape(lfw):
    emb = read_embeddings(lfw)
    assert len(emb) == LFW.images == 13_233 and emb.dim == LFW.dim
    assert set(emb.split.tolist()) == {"free"} and emb.camid is None
    names = [item.rsplit("_", 1)[0] for item in emb.ids]
    numbers = [int(item.rsplit("_", 1)[1]) for item in emb.ids]
    per_person = Counter(names)
    assert len(per_person) == LFW.people == 5_749
    assert sum(1 for count in per_person.values() if count >= 2) == LFW.multi_image_people == 1_680
    assert max(per_person.values()) == LFW.largest == 530
    # images of a person are numbered 1..count, and a person's pid is the same on every row, 1-based
    pid_of = {}
    for name, number, pid in zip(names, numbers, emb.pid.tolist()):
        assert 1 <= number <= per_person[name]
        assert pid_of.setdefault(name, pid) == pid
    assert sorted(pid_of.values()) == list(range(1, LFW.people + 1))
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-6)


def test_pairs_file_is_in_the_official_format(lfw):
    pairs = default_pairs_path(lfw)
    assert pairs == lfw.parent / "lfw.pairs.txt" and pairs.is_file()
    header, lines = parse(pairs)
    assert header == "10\t300" and len(lines) == 6_000
    ids = set(read_embeddings(lfw, columns=["id"]).ids.tolist())
    people_of_fold = []
    for fold in range(10):
        block = lines[600 * fold: 600 * (fold + 1)]
        same, different = block[:300], block[300:]
        assert all(len(f) == 3 for f in same) and all(len(f) == 4 for f in different)
        assert len({tuple(f) for f in same}) == 300 and len({tuple(f) for f in different}) == 300
        assert same == sorted(same, key=lambda f: (f[0], int(f[1]), int(f[2])))
        for name, i, j in same:
            assert int(i) < int(j) and f"{name}_{int(i):04d}" in ids and f"{name}_{int(j):04d}" in ids
        for name1, i, name2, j in different:
            assert name1 < name2 and f"{name1}_{int(i):04d}" in ids and f"{name2}_{int(j):04d}" in ids
        people_of_fold.append({f[0] for f in same} | {f[0] for f in different} | {f[2] for f in different})
    # people-disjoint folds, as in LFW's View 2
    for a in range(10):
        for b in range(a + 1, 10):
            assert not people_of_fold[a] & people_of_fold[b]


def test_verify_runs_on_it_with_the_lfw_grid(lfw, capsys, tmp_path):
    code = run(["verify", str(lfw), "--pairs", str(default_pairs_path(lfw)), "--threshold-grid", "lfw",
                "--json", "--workspace", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["num_pairs"] == 6_000 and result["num_same"] == 3_000 and result["folds"] == 10
    # difficulty 1.0 is a good face model, not a perfect one (docs/data.md: about 98 %)
    assert 0.95 < result["accuracy_mean"] < 0.995


def test_same_seed_same_files_other_seed_other_files(tmp_path, lfw):
    again = tmp_path / "again.parquet"
    other = tmp_path / "other.parquet"
    assert run(["synth", "--preset", "lfw", "--seed", "0", "--out", str(again)]) == 0
    assert run(["synth", "--preset", "lfw", "--seed", "1", "--out", str(other)]) == 0
    assert read_embeddings(again).content_hash() == read_embeddings(lfw).content_hash()
    assert default_pairs_path(again).read_text() == default_pairs_path(lfw).read_text()
    assert read_embeddings(other).content_hash() != read_embeddings(lfw).content_hash()
    assert default_pairs_path(other).read_text() != default_pairs_path(lfw).read_text()


def test_pairs_out_puts_the_pairs_file_elsewhere(tmp_path):
    out, pairs = tmp_path / "emb.parquet", tmp_path / "sub" / "my-pairs.txt"
    assert run(["synth", "--preset", "lfw", "--out", str(out), "--pairs-out", str(pairs)]) == 0
    assert pairs.read_text().startswith("10\t300\n") and not default_pairs_path(out).exists()


def test_pairs_out_with_another_preset_is_a_usage_error(tmp_path, capsys):
    assert run(["synth", "--preset", "small", "--out", str(tmp_path / "s.parquet"),
                "--pairs-out", str(tmp_path / "p.txt")]) == 2
    assert "only the lfw preset" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), largest=st.integers(2, 600), data=st.data())
def test_power_law_counts_sum_to_the_total(n, largest, data):
    total = data.draw(st.integers(largest + 2 * (n - 1), largest * n))
    counts = _power_law_counts(n, total, largest)
    assert len(counts) == n and counts.sum() == total
    assert counts.min() >= 2 and counts.max() == largest


def test_a_shape_too_small_for_its_pairs_is_a_clear_error(tmp_path):
    tiny = LfwShape(people=30, images=60, multi_image_people=10, largest=10, dim=16, folds=10, pairs_per_fold=300)
    with pytest.raises(ValueError, match="could not draw 300 distinct pairs"):
        generate_lfw(0, tmp_path / "t.parquet", shape=tiny)
    assert not list(tmp_path.iterdir())


def test_a_small_shape_is_consistent(tmp_path):
    shape = LfwShape(people=200, images=600, multi_image_people=100, largest=40, dim=32, folds=2, pairs_per_fold=50)
    out, pairs = generate_lfw(3, tmp_path / "t.parquet", shape=shape)
    header, lines = parse(pairs)
    assert header == "2\t50" and len(lines) == 200
    assert len(read_embeddings(out)) == 600
