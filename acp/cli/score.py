"""Placeholder: commands of this stage are registered here once the stage exists."""
