"""Trainer service: advantages, the policy loss, sequence packing and the RL driver."""
