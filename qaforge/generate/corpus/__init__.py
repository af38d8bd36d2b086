"""The textbook: its source files (`files`), its chapters (`chapters`) and its chunks (`chunking`)."""

from qaforge.generate.corpus.chapters import Chapter, load_chapter_map, load_corpus
from qaforge.generate.corpus.chunking import (Chunk, TextUnit, chunk_chapter, chunk_corpus, split_sentences,
                                              text_units)
from qaforge.generate.corpus.files import CorpusError, list_source_files, read_text, unwrap_pdf_lines

__all__ = ["Chapter", "Chunk", "CorpusError", "TextUnit", "chunk_chapter", "chunk_corpus", "list_source_files",
           "load_chapter_map", "load_corpus", "read_text", "split_sentences", "text_units", "unwrap_pdf_lines"]
