"""The parameters of every vLLM method vllm-prune overrides, as the checked releases
have them: the load-time check compares an unchecked release's against these.

Written by ``python -m devtools.vllm_check --write-parameters`` from the installed
vLLM; ``devtools.vllm_check`` checks them against it and each checked release."""

PARAMETERS: dict[str, tuple[str, ...]] = {
    "vllm.connections:HTTPConnection.__init__": (
        "pos self",
        "kw reuse_client=True",
    ),
    "vllm.connections:HTTPConnection.get_async_client": (
        "pos self",
    ),
    "vllm.model_executor.models.interfaces:SupportsMultiModal.embed_input_ids": (
        "pos self",
        "pos input_ids",
        "pos multimodal_embeddings=None",
        "kw is_multimodal=None",
    ),
    "vllm.model_executor.models.llava:BaseLlavaMultiModalProcessor._get_prompt_updates": (
        "pos self",
        "pos mm_items",
        "pos hf_processor_mm_kwargs",
        "pos out_mm_kwargs",
    ),
    "vllm.model_executor.models.llava:LlavaForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix=''",
    ),
    "vllm.model_executor.models.llava:LlavaForConditionalGeneration.embed_multimodal": (
        "pos self",
        "**kwargs",
    ),
    "vllm.model_executor.models.llava:LlavaMultiModalProcessor._get_mm_fields_config": (
        "pos self",
        "pos hf_inputs",
        "pos hf_processor_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix=''",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.embed_multimodal": (
        "pos self",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.forward": (
        "pos self",
        "pos input_ids",
        "pos positions",
        "pos intermediate_tensors=None",
        "pos inputs_embeds=None",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_encoder_cudagraph_config": (
        "pos self",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions": (
        "pos self",
        "pos input_tokens",
        "pos mm_features",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_mm_fields_config": (
        "pos self",
        "pos hf_inputs",
        "pos hf_processor_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_prompt_updates": (
        "pos self",
        "pos mm_items",
        "pos hf_processor_mm_kwargs",
        "pos out_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix=''",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.embed_multimodal": (
        "pos self",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.forward": (
        "pos self",
        "pos input_ids",
        "pos positions",
        "pos intermediate_tensors=None",
        "pos inputs_embeds=None",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_encoder_cudagraph_config": (
        "pos self",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_mrope_input_positions": (
        "pos self",
        "pos input_tokens",
        "pos mm_features",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLMultiModalProcessor._get_mm_fields_config": (
        "pos self",
        "pos hf_inputs",
        "pos hf_processor_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen2_vl:Qwen2VLMultiModalProcessor._get_prompt_updates": (
        "pos self",
        "pos mm_items",
        "pos hf_processor_mm_kwargs",
        "pos out_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix='model'",
    ),
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids": (
        "pos self",
        "pos input_ids",
        "pos multimodal_embeddings=None",
        "kw is_multimodal=None",
    ),
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.forward": (
        "pos self",
        "pos input_ids",
        "pos positions",
        "pos intermediate_tensors=None",
        "pos inputs_embeds=None",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen3_5:Qwen3_5MoeForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix='model'",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix='model'",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.embed_input_ids": (
        "pos self",
        "pos input_ids",
        "pos multimodal_embeddings=None",
        "kw is_multimodal=None",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.embed_multimodal": (
        "pos self",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.forward": (
        "pos self",
        "pos input_ids",
        "pos positions",
        "pos intermediate_tensors=None",
        "pos inputs_embeds=None",
        "**kwargs",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config": (
        "pos self",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions": (
        "pos self",
        "pos input_tokens",
        "pos mm_features",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._apply_hf_processor_main": (
        "pos self",
        "pos mm_items",
        "pos hf_kwargs",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_mm_fields_config": (
        "pos self",
        "pos hf_inputs",
        "pos hf_processor_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_mm_hashes": (
        "pos self",
        "pos inputs",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_prompt_updates": (
        "pos self",
        "pos mm_items",
        "pos hf_processor_mm_kwargs",
        "pos out_mm_kwargs",
    ),
    "vllm.model_executor.models.qwen3_vl_moe:Qwen3VLMoeForConditionalGeneration.__init__": (
        "pos self",
        "kw vllm_config",
        "kw prefix=''",
    ),
    "vllm.multimodal.media.connector:MediaConnector.__init__": (
        "pos self",
        "pos media_io_kwargs=None",
        "pos connection=global_http_connection",
        "kw allowed_local_media_path=''",
        "kw allowed_media_domains=None",
    ),
    "vllm.multimodal.media.connector:MediaConnector.load_from_url": (
        "pos self",
        "pos url",
        "pos media_io",
        "kw fetch_timeout=None",
    ),
    "vllm.multimodal.media.connector:MediaConnector.load_from_url_async": (
        "pos self",
        "pos url",
        "pos media_io",
        "kw fetch_timeout=None",
    ),
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._apply_hf_processor_main": (
        "pos self",
        "pos mm_items",
        "pos hf_kwargs",
    ),
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_hashes": (
        "pos self",
        "pos inputs",
    ),
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._maybe_apply_prompt_updates": (
        "pos self",
        "pos mm_items",
        "pos mm_res",
    ),
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply": (
        "pos self",
        "pos inputs",
        "pos timing_ctx",
    ),
    "vllm.v1.metrics.loggers:StatLoggerBase.__init__": (
        "pos self",
        "pos vllm_config",
        "pos engine_index=0",
    ),
    "vllm.v1.metrics.loggers:StatLoggerBase.log_engine_initialized": (
        "pos self",
    ),
    "vllm.v1.metrics.loggers:StatLoggerBase.record": (
        "pos self",
        "pos scheduler_stats",
        "pos iteration_stats",
        "pos mm_cache_stats=None",
        "pos engine_idx=0",
    ),
    "vllm.v1.worker.gpu.model_states.default:DefaultModelState.__init__": (
        "pos self",
        "pos vllm_config",
        "pos model",
        "pos encoder_cache",
        "pos device",
    ),
    "vllm.v1.worker.gpu.model_states.default:DefaultModelState.gather_mm_embeddings": (
        "pos self",
        "pos input_batch",
        "pos draft_lookahead=0",
    ),
    "vllm.v1.worker.gpu.model_states.default:DefaultModelState.prepare_inputs_embeds": (
        "pos self",
        "pos scheduled_encoder_inputs",
        "pos input_batch",
        "pos req_states",
    ),
}
