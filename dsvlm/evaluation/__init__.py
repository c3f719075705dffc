from .vqa_exact_match import VQAExactMatch, normalize_answer

__all__ = ['VQAExactMatch', 'normalize_answer']
