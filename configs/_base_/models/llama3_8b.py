# Meta Llama-3-8B-Instruct (8.03B parameters, grouped-query attention).
__llm_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/Meta-Llama-3-8B-Instruct'

llm = dict(
    type='HFCausalLM',
    pretrained=__llm_dir,
    config=dict(
        model_type='llama', hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=128009),
    attn_implementation='sdpa',
)
tokenizer = dict(type='pretrained_tokenizer', path=__llm_dir)
template = 'llama3'
