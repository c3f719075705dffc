# Qwen2-7B-Instruct (7.62B parameters, grouped-query attention, q/k/v biases).
__llm_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/Qwen2-7B-Instruct'

llm = dict(
    type='HFCausalLM',
    pretrained=__llm_dir,
    config=dict(
        model_type='qwen2', hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151643,
        eos_token_id=151645),
    attn_implementation='sdpa',
)
tokenizer = dict(type='pretrained_tokenizer', path=__llm_dir)
template = 'qwen2'
