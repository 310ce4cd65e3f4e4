"""The mail-client gateway (an edge): SMTP submission, POP3 and IMAP on 127.0.0.1 over the local
Maildir, so ordinary mail clients work unmodified (DESIGN.md §8, seed 004 §4)."""
