"""Streaming encode and decode: a source's time chunks through the WLA, into a store and back.

* :mod:`.common`: the model's block encode/decode (the one step every path runs), the
  background reads ahead and writes behind (devices and precision: :mod:`era5latent.model.devices`).
* :mod:`.encoding`: encode into a latent store (``EncodeJob``: one time chunk at a time,
  resumable, in parts or on a cluster), with the residual layer when asked for.
* :mod:`.decoding`: decode a latent store into ERA5 fields (residuals applied when present).
* :mod:`.distributed`: the same units of work on a Dask cluster (``--scheduler``/``--workers``)
  and ``finalize`` of a store built in parts.
* :mod:`.unseen`: ``--allow-unseen-levels``, levels a group was not trained on.
* :mod:`.residual`: the error-bounded residual layer's numbers (``--max-error``; no IO).

The names of ``common``, ``encoding`` and ``decoding`` are importable from ``era5latent.pipeline``.
"""

from era5latent.model.devices import PRECISIONS, autocast, resolve_device, resolve_precision
from era5latent.pipeline.common import (Background, Progress, check_grid, check_model_channels,
                                        decode_block, decode_fields, encode_block, encode_fields,
                                        normaliser, read_fields, to_device, to_host)
from era5latent.pipeline.decoding import (DecodePlan, DecodeResult, check_store_metadata,
                                          check_store_model, decode, decode_precision,
                                          plan_decode, read_codes, read_group_masks, read_residuals,
                                          select_store_channels)
from era5latent.pipeline.encoding import (AUTO_CHUNK_FIELD_BYTES, AUTO_TIME_CHUNK,
                                          MAX_CHUNK_FIELD_BYTES, EncodedChunk, EncodeJob,
                                          EncodeResult, residual_spec, residual_streams,
                                          store_spec,
                                          auto_time_chunk, check_time_chunk, encode,
                                          first_step_masks, prepare_encode, ready_to_encode)

__all__ = [
                                        "AUTO_CHUNK_FIELD_BYTES",
                                        "AUTO_TIME_CHUNK",
                                        "MAX_CHUNK_FIELD_BYTES",
                                        "PRECISIONS",
                                        "Background",
                                        "DecodePlan",
                                        "DecodeResult",
                                        "EncodeJob",
                                        "EncodeResult",
                                        "EncodedChunk",
                                        "Progress",
                                        "normaliser",
                                        "store_spec",
                                        "to_device",
                                        "to_host",
                                        "auto_time_chunk",
                                        "autocast",
                                        "check_grid",
                                        "check_model_channels",
                                        "check_store_metadata",
                                        "check_store_model",
                                        "check_time_chunk",
                                        "decode",
                                        "decode_block",
                                        "decode_fields",
                                        "decode_precision",
                                        "encode",
                                        "encode_block",
                                        "encode_fields",
                                        "first_step_masks",
                                        "plan_decode",
                                        "prepare_encode",
                                        "read_codes",
                                        "read_fields",
                                        "read_group_masks",
                                        "read_residuals",
                                        "ready_to_encode",
                                        "residual_spec",
                                        "residual_streams",
                                        "resolve_device",
                                        "resolve_precision",
                                        "select_store_channels",
]
