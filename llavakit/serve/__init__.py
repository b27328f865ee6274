"""Chat, batched inference and the OpenAI-compatible server (see docs/serving.md).

- ``batch``: one shared ``generate`` call for many rows, each with its own sampling, stops, stream
- ``prompts``: generation prompts (+ per-request system prompt), tokenized as in training
- ``models``: what MODEL may be (preset, checkpoint, or with --text-only a plain LM dir / GGUF)
- ``chat`` (`llavakit chat`), ``infer`` (`llavakit infer`, :func:`~llavakit.serve.infer.run_inference`)
- ``engine``: micro-batching worker thread with a bounded queue; ``schema``, ``image_input``,
  ``api``: the FastAPI app; ``cli`` (`llavakit serve`); ``static/``: the web chat page
"""
