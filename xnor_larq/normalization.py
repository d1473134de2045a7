"""BNN's shift-based BatchNormalization (Courbariaux, Hubara et al. 2016, Alg. 3).

Training, per channel over the batch (and spatial axes)::

    μ = mean(x);  C = x − μ
    σ² = mean(C · AP2(C))
    x̂ = C · AP2(1 / sqrt(σ² + ε))
    y = AP2(γ) · x̂ + β

Every scale is a power of two (a shift in hardware). At inference the moving
mean and variance replace the batch statistics, as in Keras's
BatchNormalization, and the scales stay powers of two.
"""

from __future__ import annotations

import tensorflow as tf
from larq import utils as lq_utils

from .power_of_two import ap2

__all__ = ["ShiftBatchNormalization"]


@lq_utils.register_keras_custom_object
class ShiftBatchNormalization(tf.keras.layers.Layer):
    """Shift-based BatchNormalization, with Keras's BatchNormalization arguments.

    Arguments:
        axis: the feature axis (an int; -1 for channels-last).
        momentum: of the moving statistics, in [0, 1).
        epsilon: added to the variance, > 0.
        center, scale: learn β / γ (γ is applied as AP2(γ)).
        beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer, beta_regularizer, gamma_regularizer,
        beta_constraint, gamma_constraint: as in Keras.

    Gradients pass straight through every AP2 (see :func:`xnor_larq.ap2`).
    Under a strategy with several replicas in sync the batch statistics are
    all-reduced: each replica normalizes with those of the global batch.
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"`axis` must be an integer. Received: axis={axis!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = tf.keras.initializers.get(beta_initializer)
        self.gamma_initializer = tf.keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = tf.keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = tf.keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = tf.keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = tf.keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = tf.keras.constraints.get(beta_constraint)
        self.gamma_constraint = tf.keras.constraints.get(gamma_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        rank = input_shape.rank
        if rank is None or not -rank <= self.axis < rank:
            raise ValueError(f"`axis={self.axis}` is out of range for inputs of rank {rank}.")
        self._axis = self.axis % rank
        channels = input_shape[self._axis]
        if channels is None:
            raise ValueError(f"The feature axis {self.axis} of the input must be known.")
        self.input_spec = tf.keras.layers.InputSpec(ndim=rank, axes={self._axis: channels})
        self._reduction_axes = [i for i in range(rank) if i != self._axis]
        self._broadcast_shape = [1] * rank
        self._broadcast_shape[self._axis] = channels
        shape = (channels,)
        self.gamma = (
            self.add_weight(
                name="gamma",
                shape=shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,  # the layer computes in float32 (see call)
            )
            if self.scale
            else None
        )
        self.beta = (
            self.add_weight(
                name="beta",
                shape=shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )
            if self.center
            else None
        )
        moving = dict(
            shape=shape,
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
            autocast=False,
        )
        self.moving_mean = self.add_weight(
            name="moving_mean", initializer=self.moving_mean_initializer, **moving
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", initializer=self.moving_variance_initializer, **moving
        )
        super().build(input_shape)

    def _broadcast(self, value):
        return tf.reshape(value, self._broadcast_shape)

    def call(self, inputs, training=None):
        if training is None:
            training = tf.keras.backend.learning_phase()
        inputs = tf.convert_to_tensor(inputs)
        # Statistics in float32 (as Keras's BatchNormalization under mixed precision).
        x = tf.cast(inputs, tf.float32)

        def batch_statistics():
            mean, centered, variance = self._synchronized_statistics(x)
            for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
                moving.assign(
                    moving * self.momentum + tf.stop_gradient(value) * (1 - self.momentum)
                )
            return centered, variance

        def moving_statistics():
            centered = x - self._broadcast(self.moving_mean)
            return centered, tf.convert_to_tensor(self.moving_variance)

        centered, variance = tf.__internal__.smart_cond.smart_cond(
            training, batch_statistics, moving_statistics
        )
        outputs = centered * self._broadcast(ap2(tf.math.rsqrt(variance + self.epsilon)))
        if self.scale:
            outputs = outputs * self._broadcast(ap2(tf.cast(self.gamma, tf.float32)))
        if self.center:
            outputs = outputs + self._broadcast(tf.cast(self.beta, tf.float32))
        return tf.cast(outputs, inputs.dtype)

    def _synchronized_statistics(self, x):
        """Mean, centered input and shift-based variance over the global batch.

        Under a strategy with several replicas in sync, the sums (and counts)
        are all-reduced, so every replica normalizes with the statistics one
        device would compute on the whole batch (as Keras's synchronized
        BatchNormalization does); the moving statistics then agree on every
        replica, and the saved model is the one that was evaluated.
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        count = tf.cast(tf.size(x), tf.float32) / tf.cast(tf.shape(x)[self._axis], tf.float32)
        total = tf.reduce_sum(x, axis=self._reduction_axes)
        if replicas > 1:
            total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
        mean = total / count
        centered = x - self._broadcast(mean)
        spread = tf.reduce_sum(centered * ap2(centered), axis=self._reduction_axes)
        if replicas > 1:
            spread = context.all_reduce(tf.distribute.ReduceOp.SUM, spread)
        return mean, centered, spread / count

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        serialize = tf.keras.initializers.serialize
        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": serialize(self.beta_initializer),
            "gamma_initializer": serialize(self.gamma_initializer),
            "moving_mean_initializer": serialize(self.moving_mean_initializer),
            "moving_variance_initializer": serialize(self.moving_variance_initializer),
            "beta_regularizer": tf.keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": tf.keras.regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": tf.keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": tf.keras.constraints.serialize(self.gamma_constraint),
        }
