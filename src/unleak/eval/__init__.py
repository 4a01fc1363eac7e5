"""Evaluation: leakage, the LLM-PC extraction attack, utility (MMLU), fluency, report and plots."""
