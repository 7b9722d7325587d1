"""pwm-flow: PWM with flow-matching latent dynamics and a fair A/B protocol."""

__version__ = "0.1.0"
