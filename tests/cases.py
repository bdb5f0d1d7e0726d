"""Inputs and parameters each task is checked on: parity with PyTorch, and over HTTP."""

from __future__ import annotations

from typing import Any

MASK = "{mask}"
LONG_CONTEXT = "My name is Sarah and I live in London. " * 60

CASES: dict[str, list[tuple[Any, dict[str, Any]]]] = {
    "text-classification": [
        ("This sound track was beautiful! It paints the scenery in your mind so well.", {}),
        ({"text": "I live in Paris.", "text_pair": "Paris is the capital of France."}, {}),
        ("Hi, I recently bought a device from your company.", {"top_k": None}),
        ("Hi, I recently bought a device from your company.", {"top_k": 2, "function_to_apply": "sigmoid"}),
    ],
    "zero-shot-classification": [
        ("I would like to get reimbursed for the device.", {"candidate_labels": ["refund", "legal", "faq"]}),
        ("The weather today is sunny.", {"candidate_labels": "weather, sports", "multi_label": True}),
        ("Who wrote the book?", {"candidate_labels": ["books"], "hypothesis_template": "This is about {}."}),
    ],
    "token-classification": [
        ("My name is Sarah and I live in London.", {}),
        ("Sarah works at Hugging Face in New York City since 2019.", {"aggregation_strategy": "simple"}),
        ("Sarah works at Hugging Face in New York City since 2019.", {"aggregation_strategy": "first"}),
        ("Sarah works at Hugging Face in New York City since 2019.", {"aggregation_strategy": "average"}),
        ("Sarah works at Hugging Face in New York City since 2019.", {"aggregation_strategy": "max"}),
        ("Paris is the capital of France.", {"ignore_labels": []}),
        (LONG_CONTEXT, {"aggregation_strategy": "simple", "stride": 16}),
    ],
    "question-answering": [
        (
            {"question": "What is used for inference?", "context": "This model is used with sagemaker for inference."},
            {},
        ),
        ({"question": "Where do I live?", "context": "My name is Sarah and I live in London."}, {"top_k": 3}),
        ({"question": "Where do I live?", "context": LONG_CONTEXT}, {"max_seq_len": 64, "doc_stride": 16, "top_k": 2}),
        (
            {"question": "Who?", "context": "The book was written by an unknown author."},
            {"handle_impossible_answer": True},
        ),
        (
            {"question": "Who?", "context": "The book was written by an unknown author."},
            {"align_to_words": False, "max_answer_len": 3},
        ),
    ],
    "fill-mask": [
        (f"The capital of France is {MASK}.", {}),
        (f"The capital of France is {MASK}.", {"top_k": 2}),
        (f"{MASK} is the capital of {MASK}.", {"top_k": 3}),
        (f"This sound track was {MASK}!", {"targets": ["beautiful", "music", "weather"]}),
    ],
    "feature-extraction": [
        ("This sound track was beautiful!", {}),
        (["Hello world.", "A much longer sentence about the weather in London today."], {}),
    ],
    "sentence-embeddings": [
        ("This sound track was beautiful!", {}),
        (["Hello world.", "A much longer sentence about the weather in London today."], {"normalize": False}),
        ("Where is the station?", {"prompt_name": "query"}),
    ],
    "sentence-similarity": [
        ({"source_sentence": "What a wonderful day", "sentences": ["A fine day", "A sad night", "Rain"]}, {}),
    ],
    "ranking": [
        (["What is the capital of France?", "Paris is the capital of France."], {}),
        ([["Where do I live?", "In London."], ["Where do I live?", "Bread is tasty."]], {"raw_scores": True}),
        (
            {"query": "Where do I live?", "texts": ["In London.", "Bread is tasty.", "I live in Paris."]},
            {"return_text": True},
        ),
    ],
    "text-generation": [
        ("Hello, my name is", {"max_new_tokens": 8}),
        ("Hello, my name is", {"max_new_tokens": 6, "return_full_text": False, "repetition_penalty": 1.3}),
        ([{"role": "user", "content": "What is the weather like?"}], {"max_new_tokens": 5}),
        ("The weather today is", {"max_new_tokens": 8, "do_sample": True, "seed": 7, "top_k": 20, "top_p": 0.9}),
        ("The weather today is", {"generation_parameters": {"max_new_tokens": 4}}),
    ],
    "text2text-generation": [("The weather today is sunny.", {"max_new_tokens": 8})],
    "summarization": [("The weather today is sunny with a chance of rain in the evening.", {"max_new_tokens": 6})],
    "translation": [("translate English to German: The house is wonderful.", {"max_length": 8})],
}
# Tasks with a transformers pipeline to compare against (the others compare with sentence-transformers).
TRANSFORMERS_TASKS = [
    "text-classification",
    "zero-shot-classification",
    "token-classification",
    "question-answering",
    "fill-mask",
    "feature-extraction",
]
GENERATIVE = ["text-generation", "text2text-generation", "summarization", "translation"]
