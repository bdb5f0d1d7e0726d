"""Tables for table-question-answering: TAPAS's table encoding and answer decoding, without transformers."""
