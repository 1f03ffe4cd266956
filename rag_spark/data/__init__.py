"""Demo datasets built offline: the French Debian FAQ (queries, answers, documents) and a Wikipedia haystack."""
