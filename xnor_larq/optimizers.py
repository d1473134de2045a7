"""BNN's shift-based AdaMax (Courbariaux, Hubara et al. 2016, Alg. 4).

With gradient ``g_t``, ``β1 = 0.9``, ``β2 = 0.999`` and step size ``a``::

    m_t = β1·m_{t−1} + (1 − β1)·g_t
    v_t = max(β2·v_{t−1}, |g_t|)
    θ_t = θ_{t−1} − a · AP2(1 / (1 − β1^t)) · m_t · AP2(1 / (v_t + ε))

Both scales are powers of two (shifts in hardware). ``ε`` (default 1e-7, as in
Keras's Adamax) keeps ``1/v`` finite before the first non-zero gradient.
"""

from __future__ import annotations

import tensorflow as tf
from larq import utils as lq_utils

from .power_of_two import ap2

__all__ = ["ShiftAdaMax"]


@lq_utils.register_keras_custom_object
class ShiftAdaMax(tf.keras.optimizers.legacy.Optimizer):
    """Shift-based AdaMax on Keras's legacy optimizer base (the one Larq uses).

    Works with ``model.fit``, inside ``tf.distribute.MirroredStrategy``, and as
    either half of ``lq.optimizers.CaseOptimizer``. ``learning_rate`` may be a
    schedule.

    Sparse gradients (embeddings) are applied densely: every row's moments
    decay, touched or not.
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        name="ShiftAdaMax",
        **kwargs,
    ):
        for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not callable(value) and not 0.0 <= value < 1.0:
                raise ValueError(f"`{key}` must be in [0, 1). Received: {key}={value!r}")
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "m")
        for var in var_list:
            self.add_slot(var, "v")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        step = tf.cast(self.iterations + 1, var_dtype)
        beta_1 = tf.identity(self._get_hyper("beta_1", var_dtype))
        beta_2 = tf.identity(self._get_hyper("beta_2", var_dtype))
        bias_correction = ap2(1.0 / (1.0 - tf.pow(beta_1, step)), straight_through=False)
        apply_state[(var_device, var_dtype)].update(
            beta_1=beta_1,
            beta_2=beta_2,
            step_size=apply_state[(var_device, var_dtype)]["lr_t"] * bias_correction,
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coefficients = (apply_state or {}).get((var.device, var.dtype.base_dtype))
        if coefficients is None:
            coefficients = self._fallback_apply_state(var.device, var.dtype.base_dtype)
        m = self.get_slot(var, "m")
        v = self.get_slot(var, "v")
        beta_1, beta_2 = coefficients["beta_1"], coefficients["beta_2"]
        m_t = m.assign(beta_1 * m + (1.0 - beta_1) * grad, use_locking=self._use_locking)
        v_t = v.assign(tf.maximum(beta_2 * v, tf.abs(grad)), use_locking=self._use_locking)
        inverse_v = ap2(1.0 / (v_t + coefficients["epsilon"]), straight_through=False)
        update = coefficients["step_size"] * m_t * inverse_v
        return var.assign_sub(update, use_locking=self._use_locking)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        dense = tf.math.unsorted_segment_sum(grad, indices, tf.shape(var)[0])
        return self._resource_apply_dense(dense, var, apply_state)

    def get_config(self):
        return {
            **super().get_config(),
            "learning_rate": self._serialize_hyperparameter("learning_rate"),
            "decay": self._initial_decay,
            "beta_1": self._serialize_hyperparameter("beta_1"),
            "beta_2": self._serialize_hyperparameter("beta_2"),
            "epsilon": self.epsilon,
        }
