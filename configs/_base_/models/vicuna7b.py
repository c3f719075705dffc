# Vicuna-7B v1.5 (Llama-2 architecture, 6.74B parameters).
__llm_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/vicuna-7b-v1.5'

llm = dict(
    type='HFCausalLM',
    pretrained=__llm_dir,
    config=dict(  # config.json of the checkpoint, for weightless builds
        model_type='llama', hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0),
    attn_implementation='sdpa',
)
tokenizer = dict(type='pretrained_tokenizer', path=__llm_dir)
template = 'vicuna_v1'
