"""Corpus loading, chapter detection and chunking (qaforge/generate/corpus/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qaforge.generate.corpus import (CorpusError, chunk_chapter, chunk_corpus, load_corpus, read_text,
                                     split_sentences)

REPO = Path(__file__).resolve().parents[1]
PROJECT_CORPUS = REPO / "qaforge" / "data" / "corpus"
GLOSSARY = REPO.parent / "shared" / "corpus" / "gpu-glossary"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _chinese_paragraph(n: int, topic: str = "线程") -> str:
    return "".join(f"第{i}句说明{topic}的调度方式是指硬件如何安排执行。" for i in range(n))


def _chunks_at_their_offsets(folder: Path, book: str, chunk_size: int):
    """The folder's chapters and their chunks (no overlap), each chunk checked to be the text at its offsets."""
    chapters = load_corpus(folder)
    chunks = chunk_corpus(chapters, folder, chunk_size=chunk_size, overlap=0)
    text = read_text(folder / book)
    for chunk in chunks:
        assert text[chunk.char_start:chunk.char_end] == chunk.text
    return chapters, chunks


def test_chapters_from_headings_and_offsets(tmp_path):
    _write(tmp_path / "book.md", "# Chapter 3 Memory（内存）\n\n## 3.1 共享内存\n\n" + _chinese_paragraph(5)
           + "\n\n# Chapter 4 Performance（性能）\n\n## 4.1 合并访问\n\n" + _chinese_paragraph(4, "访存"))
    chapters, chunks = _chunks_at_their_offsets(tmp_path, "book.md", 300)
    assert [(c.number, c.title) for c in chapters] == [(3, "Memory（内存）"), (4, "Performance（性能）")]
    assert {c.chapter for c in chunks} == {3, 4}
    assert any(c.section == "3.1 共享内存" for c in chunks)
    assert all("访存" not in c.text for c in chunks if c.chapter == 3)


def test_chapters_from_file_names(tmp_path):
    _write(tmp_path / "ch02_data.md", "Some text about data parallelism.\n")
    _write(tmp_path / "ch10_graphs.txt", "Graph traversal on GPUs.\n")
    chapters = load_corpus(tmp_path)
    assert [c.number for c in chapters] == [2, 10]
    assert chapters[1].title == "Graphs"


def test_chapters_from_folder_layout_skip_readme(tmp_path):
    _write(tmp_path / "readme.md", "# About this book\n")
    _write(tmp_path / "perf.md", "---\ntitle: Performance\n---\n\nIndex page.\n")
    _write(tmp_path / "perf" / "occupancy.md", "---\ntitle: What is Occupancy?\n---\n\nOccupancy is a ratio.\n")
    _write(tmp_path / "hardware" / "sm.md", "The SM is the core.\n")
    chapters = load_corpus(tmp_path)
    assert [(c.number, c.title) for c in chapters] == [(1, "Hardware"), (2, "Performance")]
    chunks = chunk_corpus(chapters, tmp_path, chunk_size=500, overlap=0)
    occupancy = [c for c in chunks if c.source == "perf/occupancy.md"]
    assert occupancy and occupancy[0].section == "What is Occupancy?"
    assert not occupancy[0].text.startswith("---")      # front matter is not content


def test_chapter_map_targets_and_files(tmp_path):
    _write(tmp_path / "corpus" / "a.md", "Alpha text.\n")
    _write(tmp_path / "corpus" / "b.md", "Beta text.\n")
    chapter_map = _write(tmp_path / "map.yaml",
                         "- {number: 7, title: Beta, target: 30, files: [b.md]}\n"
                         "- {number: 9, title: Alpha, target: 12, files: ['a.*']}\n")
    chapters = load_corpus(tmp_path / "corpus", chapter_map)
    assert [(c.number, c.title, c.target) for c in chapters] == [(7, "Beta", 30), (9, "Alpha", 12)]
    assert chapters[0].spans[0][0].name == "b.md"


def test_bad_chapter_map_names_file_and_line(tmp_path):
    _write(tmp_path / "corpus" / "a.md", "Alpha.\n")
    bad = _write(tmp_path / "map.yaml", "- {number: 1, title: A}\n- {number: 2, title: [unclosed\n")
    with pytest.raises(CorpusError, match=r"map\.yaml:\d+"):
        load_corpus(tmp_path / "corpus", bad)
    wrong = _write(tmp_path / "map2.json", '[{"number": "one"}]')
    with pytest.raises(CorpusError, match=r"map2\.json: entry 1"):
        load_corpus(tmp_path / "corpus", wrong)


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "nope")
    _write(tmp_path / "empty" / "x.csv", "a,b\n")
    with pytest.raises(CorpusError, match="no .md/.txt"):
        load_corpus(tmp_path / "empty")


def test_chinese_sentence_split():
    spans = split_sentences("GPU很快。为什么？因为并行！Version 3.5 is new. Done")
    parts = ["GPU很快。", "为什么？", "因为并行！", "Version 3.5 is new.", " Done"]
    assert [s for s in ("GPU很快。为什么？因为并行！Version 3.5 is new. Done"[a:b] for a, b in spans)] == parts


def test_never_cuts_code_table_or_formula(tmp_path):
    code = "```cuda\n" + "\n".join(f"int x{i} = threadIdx.x + {i};  // 计算索引。" for i in range(30)) + "\n```\n"
    table = "| 名称 | 含义 |\n|---|---|\n" + "".join(f"| 项{i} | 说明。{i} |\n" for i in range(20))
    formula = "$$\n" + " + ".join(f"a_{i}" for i in range(80)) + "\n$$\n"
    body = "\n\n".join([_chinese_paragraph(8), code, _chinese_paragraph(6), table, formula, _chinese_paragraph(8)])
    _write(tmp_path / "ch01_x.md", "# Chapter 1 X\n\n" + body)
    chapters = load_corpus(tmp_path)
    chunks = chunk_corpus(chapters, tmp_path, chunk_size=400, overlap=60)
    assert len(chunks) > 4
    for block in (code, table, formula):
        holders = [c for c in chunks if block.strip() in c.text]
        assert holders, "every atomic block must sit whole inside one chunk"
    for chunk in chunks:
        assert chunk.text.count("```") % 2 == 0
        assert chunk.text.count("$$") % 2 == 0


def test_overlap_repeats_previous_tail(tmp_path):
    _write(tmp_path / "ch01_x.md", "# Chapter 1 X\n\n" + _chinese_paragraph(60))
    chunks = chunk_corpus(load_corpus(tmp_path), tmp_path, chunk_size=400, overlap=80)
    assert len(chunks) >= 3
    for prev, nxt in zip(chunks, chunks[1:]):
        assert 0 < nxt.overlap_chars <= 80
        assert prev.text.endswith(nxt.text[:nxt.overlap_chars])
        assert nxt.text[:nxt.overlap_chars].endswith("。")    # overlap is whole sentences
    no_overlap = chunk_corpus(load_corpus(tmp_path), tmp_path, chunk_size=400, overlap=0)
    assert all(b.char_start == a.char_end for a, b in zip(no_overlap, no_overlap[1:]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paragraphs=st.lists(st.tuples(st.integers(1, 12), st.booleans()), min_size=1, max_size=25),
       size=st.integers(200, 900))
def test_chunk_invariants(tmp_path, paragraphs, size):
    parts = []
    for n, with_code in paragraphs:
        parts.append(_chinese_paragraph(n))
        if with_code:
            parts.append("```\n" + "x = 1;\n" * n + "```")
    text = "# Chapter 1 T\n\n" + "\n\n".join(parts) + "\n"
    _write(tmp_path / "ch01_t.md", text)
    chunks = chunk_corpus(load_corpus(tmp_path), tmp_path, chunk_size=size, overlap=size // 4)
    covered = 0
    for chunk in chunks:
        assert text[chunk.char_start:chunk.char_end] == chunk.text
        assert text[covered:chunk.char_start].strip() == ""   # only blank space falls between chunks
        covered = max(covered, chunk.char_end)
        assert len(chunk.text) <= size or chunk.text.lstrip().startswith("```")
        assert chunk.text.count("```") % 2 == 0
    assert text[covered:].strip() == ""


@pytest.mark.skipif(not PROJECT_CORPUS.is_dir(), reason="project corpus qaforge/data/corpus not present")
def test_project_corpus_chapters():
    chapters = load_corpus(PROJECT_CORPUS)
    assert [c.number for c in chapters] == [1, 2, 3, 4, 5, 6, 7, 13, 16, 17, 20]
    chunks = chunk_corpus(chapters, PROJECT_CORPUS)
    assert all(len(c.text) <= 3500 for c in chunks)


@pytest.mark.skipif(not GLOSSARY.is_dir(), reason=f"shared GPU glossary corpus not found at {GLOSSARY}")
def test_glossary_layout_chapters():
    chapters = load_corpus(GLOSSARY)
    assert [c.title for c in chapters] == ["Device Hardware", "Device Software", "Host Software", "Performance"]


def _write_pdf(path, pages: list[list[str]]) -> None:
    """A real PDF (fpdf2, core font): one list of lines per page."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.multi_cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def test_pdf_textbook_chapters_skip_contents_and_prose_mentions(tmp_path):
    pytest.importorskip("fpdf")
    body = ("A warp is a group of thirty-two threads that the hardware schedules together. "
            "Threads of a warp execute the same instruction at the same time. ") * 6
    _write_pdf(tmp_path / "book.pdf", [
        ["Contents", "Chapter 1 Introduction .......... 1", "Chapter 2 Memory architecture 9"],
        ["CHAPTER 1 Introduction", body, "Chapter 2 explains how memory is organised."],
        ["CHAPTER 2", "Memory architecture", body.replace("warp", "shared memory bank")],
        ["CHAPTER 2 Memory architecture", "Coalesced accesses combine the loads of a warp into few transactions."],
    ])
    chapters, chunks = _chunks_at_their_offsets(tmp_path, "book.pdf", 400)
    assert [(c.number, c.title) for c in chapters] == [(1, "Introduction"), (2, "Memory architecture")]
    by_chapter = {n: " ".join(c.text for c in chunks if c.chapter == n) for n in (1, 2)}
    assert "group of thirty-two threads" in by_chapter[1] and "shared memory bank" not in by_chapter[1]
    assert "shared memory bank" in by_chapter[2] and "Coalesced accesses" in by_chapter[2]
    assert "Contents" not in by_chapter[1] + by_chapter[2]  # the table of contents is no chapter's text


def test_pdf_lines_wrapped_by_the_layout_are_joined():
    from qaforge.generate.corpus import unwrap_pdf_lines

    page = ("CHAPTER 4 Memory\n"
            "Shared memory is an on-chip memory that every thread of a block can read and\n"
            "write; its latency is far lower than that of global memory, and bank conf-\n"
            "licts serialize accesses.\n"
            "共享内存是一种片上存储器，同一线程块中的所有线程都可以读写它，它的访问延\n"
            "迟很低。\n"
            "4.2 Tiling")
    assert unwrap_pdf_lines(page) == (
        "CHAPTER 4 Memory\n"
        "Shared memory is an on-chip memory that every thread of a block can read and write; its latency is "
        "far lower than that of global memory, and bank conflicts serialize accesses.\n"
        "共享内存是一种片上存储器，同一线程块中的所有线程都可以读写它，它的访问延迟很低。\n"
        "4.2 Tiling")
