"""The model tier on Ray Serve: one deployment per model, shared by any number of front ends.

``mmagent models serve`` (server/serving/cli.py) starts the deployments on a Ray cluster (a local
one when none is running); a front end with ``serving.engine: ray`` then sends its model calls
there (:class:`server.serving.engine.RayEngine`) instead of loading the encoders itself.

- ``<prefix>text``   the sentence encoder (retrieval and the text token of every turn)
- ``<prefix>speech`` speech recognition + speech embedding (Whisper) and prosody
- ``<prefix>vision`` the camera encoder (EfficientNet-Lite0) and face detection
- ``<prefix>llm``    the local language model (``agent.responder.kind: local``), streaming

The encoders batch the calls of all front ends with Ray Serve's ``@serve.batch``; the language
model batches with its own continuous batching. Each scales by its ``serving.<model>`` settings
(replicas, autoscaling, batch size and wait, CPUs/GPUs per replica). The language model can
instead run on any OpenAI-compatible server (vLLM, Ollama: ``agent.responder.kind: openai``).
"""
