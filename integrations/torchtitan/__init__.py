"""torchtitan adapter for Mixtera (built in a later issue)."""
