"""The balancing methods' per-step math on tiny hand-worked tensors (OGM-GE, PMR, AGM, MMPareto)."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from gblend_ray.core.spec import ModelSpec
from gblend_ray.training.balancing import (
    Prototypes,
    RunningScores,
    agm_coefficients,
    agm_responses,
    agm_scores,
    clip_if_large_,
    coalitions,
    linear_modality_logits,
    mask_inputs,
    min_norm_2,
    mmpareto_gradients,
    modulate_gradients_,
    modulated_output,
    ogm_coefficients,
    ogm_parameters,
    ogm_ratios,
    ogm_scores,
    pareto_rescale,
    pareto_weights,
    pmr_coefficients,
    prototype_logits,
    prototype_loss,
    scale_grad,
    shapley_responses,
    target_prob_sum,
)
from gblend_ray.training.engine import head_loss
from gblend_ray.training.model import build_model


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# --- OGM-GE ---------------------------------------------------------------------------------

def test_ogm_scores_sum_the_true_class_probabilities():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = torch.tensor([1, 0])
    # softmax → (1/4, 3/4) and (1/2, 1/2): 3/4 + 1/2
    assert_close(target_prob_sum(logits, targets), torch.tensor(1.25))
    assert_close(ogm_scores({"a": logits, "v": logits * 0}, targets), {"a": torch.tensor(1.25), "v": torch.tensor(1.0)})


def test_ogm_scores_refuse_multilabel_targets():
    with pytest.raises(ValueError, match="class-index"):
        target_prob_sum(torch.zeros(2, 3), torch.zeros(2, 3))


def test_ogm_coefficients_slow_only_the_dominant_modality():
    # ρ^a = 6/3 = 2 > 1: k^a = 1 − tanh(0.5 · 2) = 1 − tanh(1) = 0.238406; k^v = 1
    k = ogm_coefficients({"a": torch.tensor(6.0), "v": torch.tensor(3.0)}, alpha=0.5)
    assert_close(k, {"a": torch.tensor(0.2384058), "v": torch.tensor(1.0)})
    k = ogm_coefficients({"a": torch.tensor(3.0), "v": torch.tensor(6.0)}, alpha=0.5)
    assert_close(k, {"a": torch.tensor(1.0), "v": torch.tensor(0.2384058)})
    # ρ = 1 exactly: eq. 10 leaves both at 1
    k = ogm_coefficients({"a": torch.tensor(4.0), "v": torch.tensor(4.0)}, alpha=0.5)
    assert_close(k, {"a": torch.tensor(1.0), "v": torch.tensor(1.0)})


def test_ogm_ratio_for_more_than_two_modalities_is_against_the_mean_of_the_others():
    scores = {"a": torch.tensor(3.0), "b": torch.tensor(2.0), "c": torch.tensor(1.0)}
    # a: 3 / mean(2, 1) = 2;  b: 2 / mean(3, 1) = 1;  c: 1 / mean(3, 2) = 0.4
    assert_close(ogm_ratios(scores), {"a": torch.tensor(2.0), "b": torch.tensor(1.0), "c": torch.tensor(0.4)})
    assert_close(ogm_coefficients(scores, alpha=0.5),
                 {"a": torch.tensor(0.2384058), "b": torch.tensor(1.0), "c": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="at least two"):
        ogm_ratios({"a": torch.tensor(1.0)})


def test_linear_modality_logits_split_the_weight_and_the_bias():
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        layer.bias.copy_(torch.tensor([4.0]))
    z = linear_modality_logits(layer, {"a": 1, "v": 2}, {"a": torch.tensor([[1.0]]), "v": torch.tensor([[1.0, 1.0]])})
    # z^a = 1·1 + 4/2 = 3;  z^v = 2 + 3 + 4/2 = 7;  together layer([1, 1, 1]) = 10
    assert_close(z, {"a": torch.tensor([[3.0]]), "v": torch.tensor([[7.0]])})


def test_linear_modality_logits_sum_to_the_full_logits():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = nn.Linear(9, 4)
    dims = {"a": 2, "b": 3, "c": 4}
    features = {m: torch.randn(5, d, generator=g) for m, d in dims.items()}
    z = linear_modality_logits(layer, dims, features)
    assert_close(z["a"] + z["b"] + z["c"], layer(torch.cat([features[m] for m in dims], dim=1)))
    with pytest.raises(ValueError, match="sum to 8"):
        linear_modality_logits(layer, {"a": 2, "b": 6}, features)
    with pytest.raises(ValueError, match="'b' have 3 dims"):
        linear_modality_logits(layer, {"a": 2, "b": 4, "c": 3}, features)


def test_ogm_parameters_select_kernels_or_weight_matrices():
    conv2, conv3, norm, fc = nn.Conv2d(1, 2, 3), nn.Conv3d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2)
    params = [*conv2.parameters(), *conv3.parameters(), *norm.parameters(), *fc.parameters()]
    assert [p.dim() for p in ogm_parameters(params, "conv")] == [4, 5]
    assert [p.dim() for p in ogm_parameters(params, "weights")] == [4, 5, 2]
    with pytest.raises(ValueError, match="which='weights'"):
        ogm_parameters(fc.parameters(), "conv")
    with pytest.raises(ValueError, match="'conv' or 'weights'"):
        ogm_parameters(params, "all")


def _grad_param(shape, scale, seed):
    p = nn.Parameter(torch.zeros(shape))
    p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    return p


def test_ge_noise_has_the_gradients_standard_deviation():
    p = _grad_param((400, 500), scale=3.0, seed=1)
    g = p.grad.clone()
    modulate_gradients_([p], 0.3, ge=True, generator=torch.Generator().manual_seed(2))
    noise = p.grad - 0.3 * g
    assert abs(noise.std().item() / g.std().item() - 1) < 0.02
    assert abs(noise.mean().item()) < 0.02 * g.std().item()
    # the same generator seed gives the same noise
    q = _grad_param((400, 500), scale=3.0, seed=1)
    modulate_gradients_([q], 0.3, ge=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(p.grad, q.grad)


def test_ge_noise_goes_also_where_k_is_one_and_ogm_alone_adds_none():
    p = _grad_param((50, 40), scale=1.0, seed=3)
    g = p.grad.clone()
    modulate_gradients_([p], 1.0, ge=True, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(p.grad, g)
    q = _grad_param((50, 40), scale=1.0, seed=3)
    modulate_gradients_([q], torch.tensor(0.25), ge=False)
    assert torch.equal(q.grad, 0.25 * g)


def test_modulation_skips_tensors_without_gradient_and_gives_one_element_tensors_tiny_noise():
    none = nn.Parameter(torch.zeros(3))
    single = _grad_param((1,), scale=1.0, seed=5)
    g = single.grad.clone()
    modulate_gradients_([none, single], 0.5, generator=torch.Generator().manual_seed(6))
    assert none.grad is None
    assert torch.isfinite(single.grad).all() and abs((single.grad - 0.5 * g).item()) < 1e-6


# --- PMR ------------------------------------------------------------------------------------

PROTOS = torch.tensor([[0.0, 0.0], [3.0, 4.0]])


def test_prototype_logits_are_negative_distances_and_their_softmax_the_probabilities():
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    logits = prototype_logits(features, PROTOS)
    assert_close(logits, torch.tensor([[0.0, -5.0], [-3.0, -4.0]]))
    # softmax(0, −5) = (1/(1 + e^−5), ·) ;  softmax(−3, −4) = (1/(1 + e^−1), ·)
    assert_close(torch.softmax(logits, dim=1),
                 torch.tensor([[0.9933071, 0.0066929], [0.7310586, 0.2689414]]))


def test_prototype_logits_have_a_finite_gradient_at_a_prototype():
    features = torch.tensor([[0.0, 0.0]], requires_grad=True)
    prototype_logits(features, PROTOS).sum().backward()
    # zero from the distance 0, −(3, 4)/5 from the other prototype
    assert_close(features.grad, torch.tensor([[0.6, 0.8]]))


def test_prototypes_are_class_means_smoothed_with_momentum():
    protos = Prototypes(num_classes=2, momentum=0.2)
    protos.add(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0]))
    protos.add(torch.tensor([[0.0, 2.0]]), torch.tensor([1]))
    assert_close(protos.update(), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    protos.add(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1]))
    # 0.8 · new + 0.2 · old
    assert_close(protos.update(), torch.tensor([[3.6, 0.0], [0.0, 3.6]]))
    protos.add(torch.tensor([[1.6, 0.0]]), torch.tensor([0]))  # class 1 unseen: keeps its prototype
    assert_close(protos.update(), torch.tensor([[2.0, 0.0], [0.0, 3.6]]))
    assert_close(protos.value, torch.tensor([[2.0, 0.0], [0.0, 3.6]]))


def test_prototypes_refuse_missing_classes_bad_labels_and_empty_updates():
    protos = Prototypes(num_classes=3)
    protos.add(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"classes \[1, 2\]"):
        protos.update()
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        protos.add(torch.tensor([[1.0, 0.0]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="no features"):
        Prototypes(num_classes=2).update()
    with pytest.raises(ValueError, match="momentum"):
        Prototypes(num_classes=2, momentum=1.0)


def test_pmr_gives_the_prototype_loss_to_the_weaker_modality_only():
    alpha = 1.0
    # ρ = s^a / s^v > 1: (β, λ) = (0, α)
    assert_close(pmr_coefficients({"a": torch.tensor(1.5), "v": torch.tensor(1.0)}, alpha),
                 {"a": torch.tensor(0.0), "v": torch.tensor(1.0)})
    # ρ < 1: (α, 0)
    assert_close(pmr_coefficients({"a": torch.tensor(1.0), "v": torch.tensor(1.5)}, alpha),
                 {"a": torch.tensor(1.0), "v": torch.tensor(0.0)})
    # ρ = 1: (0, 0)
    assert_close(pmr_coefficients({"a": torch.tensor(1.5), "v": torch.tensor(1.5)}, alpha),
                 {"a": torch.tensor(0.0), "v": torch.tensor(0.0)})
    # M = 3 (ours): a: 3 vs 1.5, b: 2 vs 2 (equal), c: 1 vs 2.5 (weaker)
    scores = {"a": torch.tensor(3.0), "b": torch.tensor(2.0), "c": torch.tensor(1.0)}
    assert_close(pmr_coefficients(scores, 0.5), {"a": torch.tensor(0.0), "b": torch.tensor(0.0), "c": torch.tensor(0.5)})


def test_pmr_on_a_two_dimensional_toy():
    targets = torch.tensor([0, 1])
    # audio features sit on their class prototypes; visual ones are ambiguous
    audio = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    visual = torch.tensor([[3.0, 0.0], [0.0, 3.0]], requires_grad=True)
    logits = {"a": prototype_logits(audio, PROTOS), "v": prototype_logits(visual, PROTOS)}
    scores = {m: target_prob_sum(z, targets) for m, z in logits.items()}
    # s^a = 2 · 0.9933071;  visual: d = (3, 4) for y = 0 → 0.7310586; d = (3, √10) for y = 1
    p_v1 = 1 / (1 + math.exp(math.sqrt(10) - 3))
    assert_close(scores["a"], torch.tensor(2 * 0.9933071))
    assert_close(scores["v"], torch.tensor(0.7310586 + p_v1))
    coefficients = pmr_coefficients(scores, alpha=1.0)
    assert_close(coefficients, {"a": torch.tensor(0.0), "v": torch.tensor(1.0)})
    loss = prototype_loss(logits, targets, coefficients)
    assert_close(loss, nn.functional.cross_entropy(logits["v"], targets))
    loss.backward()
    assert torch.count_nonzero(audio.grad) == 0 and torch.count_nonzero(visual.grad) > 0


# --- AGM ------------------------------------------------------------------------------------

def test_agm_responses_sum_to_the_full_output():
    f_av, f_a0, f_0v = t(3.0, 1.0), t(2.0, 0.0), t(0.0, 2.0)
    o_a, o_v = agm_responses(f_av, f_a0, f_0v)
    # o^a = ½(f(a,v) − f(0,v) + f(a,0)) = ½(5, −1);  o^v = ½(f(a,v) − f(a,0) + f(0,v)) = ½(1, 3)
    assert_close(o_a, t(2.5, -0.5))
    assert_close(o_v, t(0.5, 1.5))
    assert_close(o_a + o_v, f_av)


def test_shapley_responses_reduce_to_the_two_modality_formula():
    g = torch.Generator().manual_seed(0)
    f = {s: torch.randn(4, 3, generator=g) for s in coalitions(["a", "v"], include_empty=True)}
    o = shapley_responses(f, ["a", "v"])
    o_a, o_v = agm_responses(f[frozenset("av")], f[frozenset("a")], f[frozenset("v")])
    assert_close(o["a"], o_a)
    assert_close(o["v"], o_v)
    o = shapley_responses(f, ["a", "v"], empty="output")
    assert_close(o["a"] + o["v"], f[frozenset("av")] - f[frozenset()])


def test_shapley_responses_for_three_modalities():
    values = {"": 1.0, "a": 1.0, "b": 2.0, "c": 3.0, "ab": 4.0, "ac": 5.0, "bc": 6.0, "abc": 10.0}
    f = {frozenset(k): torch.tensor(v) for k, v in values.items()}
    # φ_a = ⅓·(1 − 0) + ⅙·(4 − 2) + ⅙·(5 − 3) + ⅓·(10 − 6) = 14/6, and so on; v(∅) = 0
    o = shapley_responses(f, ["a", "b", "c"])
    assert_close(o, {"a": torch.tensor(7 / 3), "b": torch.tensor(10 / 3), "c": torch.tensor(13 / 3)})
    assert_close(sum(o.values()), torch.tensor(10.0))
    # with v(∅) = f(∅) = 1, each loses ⅓ · 1 and they sum to f(all) − f(∅)
    o = shapley_responses(f, ["a", "b", "c"], empty="output")
    assert_close(o, {"a": torch.tensor(2.0), "b": torch.tensor(3.0), "c": torch.tensor(4.0)})
    del f[frozenset("bc")]
    with pytest.raises(KeyError, match=r"\['b', 'c'\]"):
        shapley_responses(f, ["a", "b", "c"])


def test_coalitions_and_masked_inputs():
    assert coalitions(["a", "b"]) == [frozenset("ab"), frozenset("a"), frozenset("b")]
    assert len(coalitions(["a", "b", "c"])) == 7 and len(coalitions(["a", "b", "c"], include_empty=True)) == 8
    masked = mask_inputs({"a": torch.ones(2, 3), "b": torch.ones(2, 1)}, frozenset("a"))
    assert torch.equal(masked["a"], torch.ones(2, 3)) and torch.equal(masked["b"], torch.zeros(2, 1))


def test_agm_scores_are_clamped_cross_entropies():
    responses = {"a": torch.zeros(2, 2), "v": torch.tensor([[0.0, -30.0], [0.0, 0.0]])}
    scores = agm_scores(responses, torch.tensor([1, 0]))
    # a: −log ½ twice;  v: p(y=1) = e^−30 / (1 + e^−30) < 1e-8 → −log 1e-8 = 18.420681, and −log ½
    assert_close(scores["a"], torch.tensor(0.6931472))
    assert_close(scores["v"], torch.tensor((18.420681 + 0.6931472) / 2))


def test_agm_coefficients_from_scores_and_running_means():
    scores = {"a": torch.tensor(0.5), "v": torch.tensor(1.0)}
    means = {"a": torch.tensor(0.7), "v": torch.tensor(0.9)}
    # r^a = e^(1.0 − 0.5) = 1.648721, r̄^a = e^(0.9 − 0.7) = 1.221403, κ^a = e^(1.5 · (1.221403 − 1.648721))
    # r^v = e^−0.5 = 0.606531,       r̄^v = e^−0.2 = 0.818731,       κ^v = e^(1.5 · (0.818731 − 0.606531))
    kappa = agm_coefficients(scores, means, alpha=1.5)
    assert_close(kappa, {"a": torch.tensor(0.5267771), "v": torch.tensor(1.3747888)})
    # r̄^a − r^a = e^3 − 1 > 10 is capped: κ^a = e^(1.5 · 10)
    kappa = agm_coefficients({"a": torch.tensor(1.0), "v": torch.tensor(1.0)},
                             {"a": torch.tensor(0.0), "v": torch.tensor(3.0)}, alpha=1.5)
    assert_close(kappa, {"a": torch.tensor(math.exp(15.0)), "v": torch.tensor(math.exp(1.5 * (math.exp(-3) - 1)))})


def test_running_scores_compute_kappa_before_updating_the_means():
    running = RunningScores(["a", "v"])
    scores = {"a": torch.tensor(0.5), "v": torch.tensor(1.0)}
    # first step against means 0: κ^a = e^(1.5 · (1 − e^0.5)), κ^v = e^(1.5 · (1 − e^−0.5))
    assert_close(running.step(scores, alpha=1.5), {"a": torch.tensor(0.3779165), "v": torch.tensor(1.8043565)})
    assert_close(running.mean, scores)
    # same scores again: r = r̄, κ = 1
    assert_close(running.step(scores, alpha=1.5), {"a": torch.tensor(1.0), "v": torch.tensor(1.0)})
    running.update({"a": torch.tensor(2.0), "v": torch.tensor(1.0)})
    assert running.count == 3
    assert_close(running.mean, {"a": torch.tensor(1.0), "v": torch.tensor(1.0)})  # (0.5 + 0.5 + 2) / 3


def test_scale_grad_is_identity_forward_and_scales_the_gradient():
    x = t(1.0, -2.0).requires_grad_()
    y = scale_grad(x, torch.tensor(3.0))
    assert torch.equal(y, x.detach())
    (y * t(1.0, 2.0)).sum().backward()
    assert_close(x.grad, t(3.0, 6.0))


def test_modulated_output_scales_each_response_gradient_by_its_kappa():
    x = t(1.0, 2.0).requires_grad_()
    responses = {"a": 2 * x, "v": x}
    out = modulated_output(responses, {"a": 2.0, "v": torch.tensor(0.5)})
    assert_close(out, 3 * x.detach())
    out.sum().backward()
    assert_close(x.grad, t(4.5, 4.5))  # 2 · 2 + 0.5 · 1


def _params_with_grads(*grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_clip_rule_fires_only_when_the_fused_weight_gradient_leaves_the_unit_box():
    head, other = _params_with_grads(torch.tensor([[0.5, -1.5]]), t(2.0, 0.0))
    fired = clip_if_large_(head.grad, [head, other])
    assert bool(fired)
    reference = _params_with_grads(torch.tensor([[0.5, -1.5]]), t(2.0, 0.0))
    nn.utils.clip_grad_norm_(reference, max_norm=1.0)
    assert_close(head.grad, reference[0].grad)
    assert_close(other.grad, reference[1].grad)
    assert_close(torch.linalg.vector_norm(torch.cat([head.grad.flatten(), other.grad])), torch.tensor(1.0))
    # every element within [−1, 1] (1.0 included): nothing changes, however large the total norm
    head, other = _params_with_grads(torch.tensor([[1.0, -1.0]]), t(5.0, 5.0))
    assert not bool(clip_if_large_(head.grad, [head, other]))
    assert torch.equal(other.grad, t(5.0, 5.0)) and torch.equal(head.grad, torch.tensor([[1.0, -1.0]]))


# --- MMPareto -------------------------------------------------------------------------------

def test_pareto_weights_in_a_conflict_are_the_min_norm_solution():
    g1, g2 = t(1.0, 0.0), t(-1.0, 1.0)
    # g1·g2 = −1, ‖g2‖² = 2, ‖g1 − g2‖² = ‖(2, −1)‖² = 5:  c = (2 + 1) / 5 = 0.6
    c1, c2 = pareto_weights(g1, g2)
    assert_close((c1, c2), (torch.tensor(0.6), torch.tensor(0.4)))
    # the min-norm point (0.2, 0.4) is orthogonal to g1 − g2
    assert_close((c1 * g1 + c2 * g2) @ (g1 - g2), torch.tensor(0.0))


def test_pareto_weights_without_conflict_are_equal():
    assert_close(pareto_weights(t(1.0, 0.0), t(1.0, 1.0)), (torch.tensor(0.5), torch.tensor(0.5)))


def test_min_norm_clamps_in_the_official_order():
    assert_close(min_norm_2(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(5.0)), torch.tensor(0.999))
    assert_close(min_norm_2(torch.tensor(5.0), torch.tensor(2.0), torch.tensor(1.0)), torch.tensor(0.001))
    # both conditions hold (g1 = g2): the first, 0.999, wins
    assert_close(min_norm_2(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0)), torch.tensor(0.999))
    # the clamps reached from gradients: a zero gradient has cosine 0, so the solver runs
    assert_close(pareto_weights(t(0.0, 0.0), t(1.0, 1.0)), (torch.tensor(0.999), torch.tensor(0.001)))
    assert_close(pareto_weights(t(1.0, 1.0), t(0.0, 0.0)), (torch.tensor(0.001), torch.tensor(0.999)))
    assert_close(pareto_weights(t(0.0, 0.0), t(0.0, 0.0)), (torch.tensor(0.999), torch.tensor(0.001)))


def test_pareto_rescale_takes_the_summed_norm_where_it_is_larger():
    g1, g2 = t(1.0, 0.0), t(-1.0, 1.0)
    weights = (torch.tensor(0.6), torch.tensor(0.4))
    # ĝ = 2(0.2, 0.4) = (0.4, 0.8), ‖ĝ‖ = √0.8;  n = ‖g1 + g2‖ = ‖(0, 1)‖ = 1;  n/‖ĝ‖ = 1.118 > 1
    new = pareto_rescale(g1, g2, weights)
    assert_close(new, t(0.6708204, 1.3416408))
    assert_close(torch.linalg.vector_norm(new), torch.tensor(1.5))  # γ · n
    assert_close(pareto_rescale(g1, g2, weights, summed=t(0.0, 1.0)), new)


def test_pareto_rescale_keeps_the_combined_norm_where_it_is_not_smaller():
    g1, g2 = t(1.0, 0.0), t(1.0, 1.0)
    half = (torch.tensor(0.5), torch.tensor(0.5))
    # ĝ = g1 + g2 = (2, 1) = the summed gradient: n/‖ĝ‖ = 1, not > 1 → γ ĝ
    assert_close(pareto_rescale(g1, g2, half), t(3.0, 1.5))
    assert_close(pareto_rescale(g1, g2, half, summed=t(0.5, 0.0)), t(3.0, 1.5))  # n/‖ĝ‖ < 1
    assert_close(pareto_rescale(g1, g2, half, summed=t(4.0, 2.0)), t(6.0, 3.0))  # n/‖ĝ‖ = 2
    assert_close(pareto_rescale(g1, -g1, half, gamma=1.5), t(0.0, 0.0))  # ĝ = 0: 0, not NaN


def test_mmpareto_gradients_weigh_over_the_whole_encoder_and_rescale_per_tensor():
    fused = [t(1.0, 0.0), t(0.0)]
    uni = [t(-1.0, 0.0), t(1.0)]
    # flattened: g1 = (1, 0, 0), g2 = (−1, 0, 1): c = (2 + 1) / ‖(2, 0, −1)‖² = 0.6
    # A: ĝ = 2(0.6 − 0.4, 0) = (0.4, 0), n = 0 → γ ĝ = (0.6, 0)
    # B: ĝ = 2 · 0.4 = 0.8, n = 1, n/‖ĝ‖ = 1.25 → 1.5 · 1.25 · 0.8 = 1.5
    # (weights from tensor A alone would be ½, ½ and give A a zero gradient)
    new = mmpareto_gradients(fused, uni)
    assert_close(new[0], t(0.6, 0.0))
    assert_close(new[1], t(1.5))
    assert_close(mmpareto_gradients(fused, uni, summed=[t(0.0, 0.0), t(1.0)]), new)


def test_mmpareto_gradients_take_a_missing_gradient_as_zero():
    new = mmpareto_gradients([t(1.0, 0.0), None, None], [t(-1.0, 0.0), t(1.0), None])
    assert_close(new[0], t(0.6, 0.0))
    assert_close(new[1], t(1.5))
    assert new[2] is None
    with pytest.raises(ValueError, match="differ in length"):
        mmpareto_gradients([t(1.0)], [t(1.0), t(2.0)])


def test_the_summed_loss_gradient_of_an_encoder_is_the_sum_of_its_two():
    torch.manual_seed(0)
    spec = ModelSpec(hidden_dim=6, feature_dim=4, fusion_hidden_dim=5, fusion="concat")
    model = build_model(spec, {"a": (3,), "v": (5,)}, num_classes=3)
    g = torch.Generator().manual_seed(1)
    inputs = {"a": torch.randn(8, 3, generator=g), "v": torch.randn(8, 5, generator=g)}
    targets = torch.arange(8) % 3
    out = model(inputs)
    losses = {h: head_loss(out[h], targets) for h in out}
    encoder = list(model.encoders["a"].parameters())
    g1 = torch.autograd.grad(losses["fused"], encoder, retain_graph=True)
    g2 = torch.autograd.grad(losses["a"], encoder, retain_graph=True)
    total = torch.autograd.grad(sum(losses.values()), encoder)
    for a, b, s in zip(g1, g2, total):
        assert_close(a + b, s)
    assert_close(mmpareto_gradients(g1, g2), mmpareto_gradients(g1, g2, summed=total))
