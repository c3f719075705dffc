# Vicuna-13B v1.5 (Llama-2 architecture, 13.0B parameters).
__llm_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/vicuna-13b-v1.5'

llm = dict(
    type='HFCausalLM',
    pretrained=__llm_dir,
    config=dict(
        model_type='llama', hidden_size=5120, intermediate_size=13824,
        num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
        vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0),
    attn_implementation='sdpa',
)
tokenizer = dict(type='pretrained_tokenizer', path=__llm_dir)
template = 'vicuna_v1'
