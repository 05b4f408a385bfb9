"""What the model packages share that belongs to none of them: model-agnostic, depends on torch and numpy at most.

- `model_common.distributed`: data-parallel training under torchrun (the process group and the few collective
  steps every trainer uses: `preprocess_model.train`, `retrieve_generate_model.train`, `rewards.rl`);
- `model_common.answer_metrics`: the metrics of one answer (SQuAD/MLQA exact match and token F1, citation precision
  and recall), the same for the rewards, the trainers' held-out reports and the evaluation harness.

It exists for the layering rule: the four model packages (`preprocess_model`, `retrieve_generate_model`,
`synth_pipeline`, `rewards`) never import `ragless`, which composes them (tests/test_layering.py checks it). This
package imports neither the application nor any model package.
"""
