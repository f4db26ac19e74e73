"""A module of the plan itself, imported by its scripts."""


def line(item: str) -> str:
    return f"processed {item}\n"
