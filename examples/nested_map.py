"""Nested pipelines: a per-document pipeline mapped over each corpus's documents,
inside a map over corpora.

python examples/nested_map.py
"""

from __future__ import annotations

from plait import Pipeline, node


@node(output_name="words")
def tokenize(text: str) -> list[str]:
    return text.split()


@node(output_name="count")
def count(words: list[str]) -> int:
    return len(words)


@node(output_name="longest")
def longest(words: list[str]) -> str:
    return max(words, key=len, default="")


@node(output_name="total")
def total(counts: list[int]) -> int:
    return sum(counts)


per_doc = Pipeline([tokenize, count, longest], name="per_doc")
# One node that maps per_doc over the list `text`; its outputs become lists, renamed.
docs = per_doc.as_node(
    map_over="text", output_mapping={"count": "counts", "longest": "longests"}, name="docs"
)
corpus = Pipeline([docs, total], name="corpus")


def main() -> None:
    one = corpus.run(inputs={"text": ["a quick brown fox", "jumps over", "the lazy dog"]})
    print("one corpus:", one)
    corpora = [["to be or not to be"], ["lorem ipsum", "dolor sit amet consectetur"]]
    for index, result in enumerate(corpus.map(inputs={"text": corpora}, map_over="text")):
        print(f"corpus {index}: {result['counts']} words per document, {result['total']} in all")


if __name__ == "__main__":
    main()
