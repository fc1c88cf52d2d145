//! The built-in rule sets. Each is a list of patterns in `regex` syntax;
//! all of them run as one `RegexSet`. They use ASCII classes (`(?-u)`):
//! ASCII word boundaries keep the lazy DFA on its fast path over any text
//! (Unicode ones make it give up on non-ASCII text), and the phrasings and
//! formats they look for are ASCII.
//!
//! Precision is worth more than recall here: a false positive blocks or
//! mangles an ordinary request, so patterns name whole phrasings and
//! key formats, and formats that occur by chance (card numbers, IBANs,
//! phone numbers) are confirmed by a checksum or their surroundings.
//! `tests/fixtures/guard/` holds the corpora they are measured against.

use super::checks::{self, Confirm};
use crate::config::GuardBuiltin;

/// One pattern of a rule set, with the confirmation its candidates need.
pub struct Pattern {
    pub regex: &'static str,
    pub confirm: Option<Confirm>,
}

const fn p(regex: &'static str) -> Pattern {
    Pattern {
        regex,
        confirm: None,
    }
}

const fn confirmed(regex: &'static str, confirm: Confirm) -> Pattern {
    Pattern {
        regex,
        confirm: Some(confirm),
    }
}

pub fn patterns(b: GuardBuiltin) -> &'static [Pattern] {
    match b {
        GuardBuiltin::PromptInjection => PROMPT_INJECTION,
        GuardBuiltin::Secrets => SECRETS,
        GuardBuiltin::Pii => PII,
    }
}

const PROMPT_INJECTION: &[Pattern] = &[
    // Override: "ignore all previous instructions", "disregard the prior rules".
    p(
        r"(?i-u)\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:(?:all|any|every|each|the|your|my|these|those|of)\s+){0,3}(?:previous|prior|above|earlier|preceding|foregoing|former|original|initial|system|developer)\s+(?:instructions?|prompts?|directions?|directives?|rules|guidelines|guidance|commands|context|constraints|programming)\b",
    ),
    // "Disregard the above." / "forget everything before, and ..."
    p(
        r"(?i-u)\b(?:disregard|forget|ignore)\s+(?:(?:all|everything|anything)\s+(?:of\s+)?)?(?:the\s+|what\s+(?:was\s+said|i\s+said|you\s+were\s+told)\s+)?(?:above|before|previously|earlier|so\s+far)(?:\s*[.,;:!\n]|\s*$|\s+(?:and|then|instead|now)\b)",
    ),
    // "Forget your instructions", "ignore your programming".
    p(
        r"(?i-u)\b(?:forget|ignore|disregard|abandon|drop|discard)\s+(?:all\s+(?:of\s+)?)?your\s+(?:(?:previous|prior|original|initial|current|existing|safety|core)\s+)?(?:instructions|rules|guidelines|programming|training|directives|restrictions|guardrails|system\s+prompt|prompt)\b",
    ),
    // Safety bypass addressed to the model.
    p(
        r"(?i-u)\b(?:bypass|circumvent|disable|override|turn\s+off|get\s+around|break\s+free\s+of)\s+(?:all\s+(?:of\s+)?)?your\s+(?:(?:safety|content|ethical|moral)\s+)?(?:filters?|guidelines|restrictions|polic(?:y|ies)|programming|guardrails|safeguards|rules|alignment|limitations)\b",
    ),
    // Role-play: "you are now DAN", "act as DAN".
    p(r"(?i-u)\byou\s+are\s+(?:now\s+|going\s+to\s+(?:be|act\s+as)\s+)?(?-i:DAN)\b"),
    p(
        r"(?i-u)\b(?:act|behave|respond|roleplay|role-play|pretend\s+to\s+be)\s+(?:as|like)?\s*(?-i:DAN)\b",
    ),
    p(
        r"(?-u)\b(?:DAN|[Dd]o\s+[Aa]nything\s+[Nn]ow)\s+(?:[Mm]ode|[Pp]rompt|[Jj]ailbreak)\b|\b(?i:jailbreak|unrestricted|unfiltered)\s+(?i:mode)\s+(?i:enabled|activated|on)\b|\b(?i:you\s+are\s+now\s+in\s+(?:developer|jailbreak|unrestricted|unfiltered|god)\s+mode)\b",
    ),
    p(
        r"(?i-u)\byou\s+are\s+(?:now\s+)?(?:an?\s+)?(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|unaligned|unbound)\s+(?:ai|assistant|model|chatbot|language\s+model|llm|version)\b",
    ),
    // "act as an AI without any restrictions", "respond like a model with no filters".
    p(
        r"(?i-u)\b(?:act|behave|respond|answer|reply|roleplay|role-play)\s+(?:as|like)\s+(?:if\s+you\s+(?:are|were)\s+)?(?:an?\s+|the\s+)?(?:[a-z-]+\s+){0,3}?(?:ai|assistant|model|chatbot|bot|llm|character|persona|version\s+of\s+yourself)\b[^.\n]{0,40}?\b(?:without|with\s+no|free\s+(?:of|from))\s+(?:any\s+)?(?:restrictions|limitations|limits|filters|filtering|censorship|rules|guidelines|ethics|morals|ethical\s+\w+|moral\s+\w+|content\s+polic(?:y|ies)|safety\s+\w+)\b",
    ),
    p(
        r"(?i-u)\b(?:pretend|imagine|assume)\s+(?:that\s+)?you\s+(?:are|have|were|had)\s+(?:no|not\s+bound\s+by|free\s+(?:of|from))\s+(?:any\s+|all\s+)?(?:restrictions|rules|guidelines|filters|limits|limitations|content\s+polic(?:y|ies)|ethical\s+guidelines)\b",
    ),
    p(
        r"(?i-u)\byou\s+(?:have|are\s+under)\s+no\s+(?:restrictions|limitations|filters|content\s+polic(?:y|ies)|ethical\s+(?:guidelines|constraints|restrictions))\b|\b(?:are|you're)\s+(?:not|no\s+longer|never)\s+bound\s+by\s+(?:any\s+|your\s+|the\s+|[a-z]+'s\s+)*(?:rules|guidelines|polic(?:y|ies)|restrictions|content\s+polic(?:y|ies)|ethics)\b",
    ),
    // Exfiltration: "reveal your system prompt", "print your instructions verbatim".
    p(
        r"(?i-u)\b(?:reveal|print|output|repeat|dump|leak|disclose|expose|recite|display|echo|spell\s+out|write\s+out|type\s+out|copy)\s+(?:me\s+|us\s+|back\s+)?(?:all\s+(?:of\s+)?)?your\s+(?:(?:full|entire|exact|complete|whole|initial|original|hidden|secret|internal|real|actual|verbatim|first|underlying|system)\s+)*(?:prompt|instructions|system\s+(?:prompt|message)|rules|guidelines|directives|configuration)\b",
    ),
    p(
        r"(?i-u)\b(?:show|tell|give|send|share|provide)\s+(?:me|us)\s+(?:all\s+(?:of\s+)?)?your\s+(?:(?:full|entire|exact|complete|whole|initial|original|hidden|secret|internal|real|actual|verbatim)\s+)*(?:system\s+(?:prompt|message|instructions)|(?:initial|original|hidden|secret|internal)\s+(?:prompt|instructions))\b",
    ),
    p(
        r"(?i-u)\bwhat\s+(?:is|are|was|were)\s+your\s+(?:(?:exact|full|original|initial|hidden|secret|system|internal)\s+)+(?:prompt|instructions|message)\b",
    ),
    p(
        r"(?i-u)\brepeat\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:text|words|everything|content|instructions|lines|sentences)\s+(?:above|before\s+this|that\s+(?:came|comes|appears?|appeared)\s+before)\b",
    ),
    // Delimiter injection: chat-template tokens and fake prompt boundaries.
    p(
        r"(?i-u)<\|im_start\|>\s*(?:system|assistant|developer)\b|<\|start_header_id\|>\s*(?:system|assistant)\s*<\|end_header_id\|>|\[INST\]\s*<<SYS>>",
    ),
    p(
        r"(?i-u)</\s*(?:system|system_prompt|sys|instructions)\s*>\s*(?:<\s*(?:system|user|assistant|human|instructions|new_instructions|admin)\s*>|(?:new|updated|real|actual)\s+instructions|#{2,}|(?:ignore|disregard|forget|override)\b|you\s+are\s+now\b)",
    ),
    p(
        r"(?i-u)<\s*(?:system|admin)\s*>\s*(?:ignore|disregard|forget|override|new\s+instructions|you\s+are\s+now)\b",
    ),
    p(
        r"(?i-u)(?:^|\n)[ \t]*(?:#{2,}|={3,}|-{3,}|\*{2,}|\[{1,2}|<{1,2})[ \t]*(?:new|updated|revised|real|actual|override|admin|secret)\s+(?:instructions?|prompt|directives?|system\s+prompt)\b",
    ),
    p(
        r"(?i-u)\byour\s+(?:new|real|actual|updated|true)\s+(?:instructions|task|directives|orders)\s+(?:are|is)\b|\b(?:system|admin|developer)\s+override\s*[:\]!-]",
    ),
    p(
        r"(?i-u)[-=#*\[(<]{2,}\s*end\s+(?:of\s+)?(?:the\s+)?(?:system\s+(?:prompt|message|instructions)|instructions|prompt)\b",
    ),
    p(
        r"(?i-u)(?:^|\n)[ \t]*(?:#+[ \t]*)?(?:system|assistant)[ \t]*:[ \t]*(?:ignore|disregard|forget|override|you\s+are\s+now|new\s+instructions)\b",
    ),
];

const SECRETS: &[Pattern] = &[
    // Anthropic: sk-ant-api03-…, sk-ant-admin01-…
    confirmed(r"(?-u)\bsk-ant-[A-Za-z0-9_-]{24,}", checks::mixed),
    // OpenAI: project, service-account and admin keys; legacy 48-character keys.
    confirmed(
        r"(?-u)\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}",
        checks::mixed,
    ),
    confirmed(r"(?-u)\bsk-[A-Za-z0-9]{32,}\b", checks::mixed),
    // AWS access key ids and secret-key assignments.
    p(r"(?-u)\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    p(
        r#"(?-u)(?i:aws_?secret_?access_?key|secret_?access_?key)["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}\b"#,
    ),
    // GCP: service-account key JSON, API keys.
    p(r#"(?-u)"private_key"\s*:\s*"-----BEGIN[A-Z ]*PRIVATE KEY-----[^"]*"?"#),
    p(r"(?-u)\bAIza[0-9A-Za-z_-]{35}"),
    // GitHub tokens.
    p(r"(?-u)\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}\b"),
    p(r"(?-u)\bgithub_pat_[A-Za-z0-9_]{40,}"),
    // Slack tokens and webhooks.
    p(r"(?-u)\bxox[abprs]-[0-9A-Za-z-]{10,}"),
    p(r"(?-u)https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"),
    // PEM private keys: the whole block when it ends, else the header.
    p(r"(?-u)-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END[A-Z0-9 ]*PRIVATE KEY-----)?"),
    // JWTs: base64url JSON header and payload, then a signature.
    p(r"(?-u)\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"),
];

const PII: &[Pattern] = &[
    confirmed(
        r"(?-u)\b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b",
        checks::email,
    ),
    // International: +CC and groups separated by spaces or dashes.
    confirmed(
        r"(?-u)\+[1-9][0-9]{0,3}(?:[ -]?\(?[0-9]{1,4}\)?){2,6}",
        checks::phone_international,
    ),
    // North American with separators: (415) 555-0132, 415-555-0132, 415.555.0132.
    confirmed(
        r"(?-u)(?:\b1[ -])?(?:\([2-9][0-9]{2}\)[ ]?[2-9][0-9]{2}[ .-][0-9]{4}|\b[2-9][0-9]{2}-[2-9][0-9]{2}-[0-9]{4}|\b[2-9][0-9]{2}\.[2-9][0-9]{2}\.[0-9]{4})\b",
        checks::phone_nanp,
    ),
    confirmed(r"(?-u)\b(?:[0-9][ -]?){12,18}[0-9]\b", checks::card),
    confirmed(
        r"(?-u)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        checks::iban,
    ),
];
