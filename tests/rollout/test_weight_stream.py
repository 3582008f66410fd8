"""The tensors a weight sync streams to vLLM (rollout/vllm_engine.trainer_weights), checked without vLLM: for a
LoRA policy the stream equals the merged model PEFT itself produces (merge_and_unload), under a plain checkpoint's
names; a plain model streams its state dict with a tied weight once."""

import torch
from peft import LoraConfig as PeftLoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from posttrain.models.tiny import tiny_path
from posttrain.rollout.vllm_engine import trainer_weights


def lora_policy(base, targets):
    model = get_peft_model(base, PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():  # B starts at 0: give the adapters a delta to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_the_stream_of_a_lora_policy_is_peft_merged_model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = lora_policy(Qwen2ForCausalLM(config), ["q_proj", "v_proj", "down_proj"])  # q/v carry a bias in Qwen2
    streamed = {name: t.clone() for name, t in trainer_weights(model)}
    merged = lora_policy(Qwen2ForCausalLM(config), ["q_proj", "v_proj", "down_proj"])
    merged.load_state_dict(model.state_dict())
    expected = merged.merge_and_unload().state_dict()
    expected.pop("lm_head.weight")  # tied to the embeddings: streamed once
    assert streamed.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(streamed[name], expected[name], atol=1e-6, rtol=0, msg=name)



def test_plain_model_streams_its_state_dict_with_tied_weights_once():
    model = AutoModelForCausalLM.from_pretrained(tiny_path())
    streamed = dict(trainer_weights(model))
    state = model.state_dict()
    assert set(streamed) == set(state) - {"lm_head.weight"} and model.config.tie_word_embeddings
    assert all(streamed[k] is not None and torch.equal(streamed[k], state[k]) for k in streamed)
