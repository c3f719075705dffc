from .answer_extraction import (extract_choice, extract_yes_no,
                                process_punctuation)
from .benchmark_metric import BenchmarkMetric, check_coverage
from .multiple_choice import MultipleChoiceAccuracy
from .prediction_file import write_prediction_files
from .vqa_exact_match import VQAExactMatch, normalize_answer
from .yes_no import HallusionBenchScore, MMEScore, POPEScore

__all__ = [
    'VQAExactMatch', 'normalize_answer', 'extract_choice', 'extract_yes_no',
    'process_punctuation', 'BenchmarkMetric', 'check_coverage',
    'MultipleChoiceAccuracy', 'MMEScore', 'POPEScore', 'HallusionBenchScore',
    'write_prediction_files'
]
