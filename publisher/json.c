/*
 * json.c
 *		Reading integer fields from server answers.
 *
 * The reader is a small validating recursive-descent scanner over a byte range
 * that need not be NUL-terminated.  It never reads outside [json, json+len),
 * never allocates, and bounds its recursion by AGGR_JSON_MAX_DEPTH, so any
 * byte sequence (it is fuzzed) yields one of the AggrJsonResult values.
 * Only members of the top-level object are matched: a key inside a nested
 * value or inside a string never is.  Keys are compared after decoding their
 * escapes, so "acc\u0065pted" is "accepted".
 */
#include <stdbool.h>
#include <string.h>

#include "json.h"

typedef struct Scanner
{
	const char *p;
	const char *end;
} Scanner;

/* Room for the longest key we ever look up; longer keys simply never match. */
#define KEY_MAX 64

static void
SkipWhitespace(Scanner *s)
{
	while (s->p < s->end &&
		   (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int
HexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Read the 4 hex digits of a \u escape at s->p; false if they are not there. */
static bool
ScanHex4(Scanner *s, unsigned *code)
{
	unsigned	v = 0;

	if (s->end - s->p < 4)
		return false;
	for (int i = 0; i < 4; i++)
	{
		int			h = HexValue(s->p[i]);

		if (h < 0)
			return false;
		v = (v << 4) | (unsigned) h;
	}
	s->p += 4;
	*code = v;
	return true;
}

/* Append one decoded code point as UTF-8 to out, if it fits. */
static void
PutCodePoint(char *out, size_t *outlen, bool *overflow, unsigned cp)
{
	char		tmp[4];
	size_t		n;

	if (cp < 0x80)
	{
		tmp[0] = (char) cp;
		n = 1;
	}
	else if (cp < 0x800)
	{
		tmp[0] = (char) (0xC0 | (cp >> 6));
		tmp[1] = (char) (0x80 | (cp & 0x3F));
		n = 2;
	}
	else if (cp < 0x10000)
	{
		tmp[0] = (char) (0xE0 | (cp >> 12));
		tmp[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		tmp[2] = (char) (0x80 | (cp & 0x3F));
		n = 3;
	}
	else
	{
		tmp[0] = (char) (0xF0 | (cp >> 18));
		tmp[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
		tmp[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
		tmp[3] = (char) (0x80 | (cp & 0x3F));
		n = 4;
	}
	if (*outlen + n > KEY_MAX)
	{
		*overflow = true;
		return;
	}
	memcpy(out + *outlen, tmp, n);
	*outlen += n;
}

/*
 * Scan a string starting at the opening quote.  If out is not NULL, decode
 * it into out (KEY_MAX bytes); *overflow says it did not fit.
 */
static bool
ScanString(Scanner *s, char *out, size_t *outlen, bool *overflow)
{
	size_t		dummy_len = 0;
	bool		dummy_overflow = false;

	if (out == NULL)
	{
		outlen = &dummy_len;
		overflow = &dummy_overflow;
	}
	*outlen = 0;
	*overflow = false;
	s->p++;						/* opening quote */
	while (s->p < s->end)
	{
		unsigned char c = (unsigned char) *s->p++;
		unsigned	cp;

		if (c == '"')
			return true;
		if (c < 0x20)
			return false;		/* raw control characters are not allowed */
		if (c != '\\')
		{
			if (out && *outlen < KEY_MAX)
				out[(*outlen)++] = (char) c;
			else
				*overflow = true;
			continue;
		}
		if (s->p >= s->end)
			return false;
		c = (unsigned char) *s->p++;
		switch (c)
		{
			case '"':
			case '\\':
			case '/':
				cp = c;
				break;
			case 'b':
				cp = '\b';
				break;
			case 'f':
				cp = '\f';
				break;
			case 'n':
				cp = '\n';
				break;
			case 'r':
				cp = '\r';
				break;
			case 't':
				cp = '\t';
				break;
			case 'u':
				if (!ScanHex4(s, &cp))
					return false;
				if (cp >= 0xD800 && cp <= 0xDBFF &&
					s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u')
				{
					Scanner		look = {s->p + 2, s->end};
					unsigned	low;

					if (ScanHex4(&look, &low) && low >= 0xDC00 && low <= 0xDFFF)
					{
						cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
						s->p = look.p;
					}
				}
				if (cp >= 0xD800 && cp <= 0xDFFF)
					cp = 0xFFFD;	/* a lone surrogate decodes to U+FFFD */
				break;
			default:
				return false;
		}
		if (out)
			PutCodePoint(out, outlen, overflow, cp);
	}
	return false;				/* unterminated */
}

/* Scan a number per the JSON grammar (TokenToInt64 tells integers apart). */
static bool
ScanNumber(Scanner *s)
{
	const char *p = s->p;

	if (p < s->end && *p == '-')
		p++;
	if (p >= s->end)
		return false;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		while (p < s->end && *p >= '0' && *p <= '9')
			p++;
	else
		return false;
	if (p < s->end && *p == '.')
	{
		p++;
		if (p >= s->end || *p < '0' || *p > '9')
			return false;
		while (p < s->end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < s->end && (*p == 'e' || *p == 'E'))
	{
		p++;
		if (p < s->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= s->end || *p < '0' || *p > '9')
			return false;
		while (p < s->end && *p >= '0' && *p <= '9')
			p++;
	}
	s->p = p;
	return true;
}

static bool
ScanLiteral(Scanner *s, const char *word)
{
	size_t		n = strlen(word);

	if ((size_t) (s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return false;
	s->p += n;
	return true;
}

/* The key looked up among the members of the top-level object, and its value. */
typedef struct Lookup
{
	const char *key;
	size_t		keylen;
	const char *found;			/* start of the first matching value, or NULL */
	const char *found_end;
} Lookup;

static bool ScanValue(Scanner *s, int depth);

/*
 * Scan an object or array starting at its opening bracket.  When lookup is
 * not NULL (only for the top-level object) member names are decoded and
 * compared with lookup->key.
 */
static bool
ScanContainer(Scanner *s, int depth, Lookup *lookup)
{
	char		close = (*s->p == '{') ? '}' : ']';

	if (depth >= AGGR_JSON_MAX_DEPTH)
		return false;
	s->p++;
	SkipWhitespace(s);
	if (s->p < s->end && *s->p == close)
	{
		s->p++;
		return true;
	}
	for (;;)
	{
		char		name[KEY_MAX];
		size_t		namelen = 0;
		bool		overflow = false;
		const char *start;

		if (close == '}')
		{
			if (s->p >= s->end || *s->p != '"' ||
				!ScanString(s, lookup ? name : NULL, &namelen, &overflow))
				return false;
			SkipWhitespace(s);
			if (s->p >= s->end || *s->p != ':')
				return false;
			s->p++;
			SkipWhitespace(s);
		}
		start = s->p;
		if (!ScanValue(s, depth + 1))
			return false;
		if (lookup && lookup->found == NULL && !overflow &&
			namelen == lookup->keylen && memcmp(name, lookup->key, namelen) == 0)
		{
			lookup->found = start;
			lookup->found_end = s->p;
		}
		SkipWhitespace(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == close)
		{
			s->p++;
			return true;
		}
		if (*s->p != ',')
			return false;
		s->p++;
		SkipWhitespace(s);
	}
}

/* Scan any value, with leading whitespace; depth counts enclosing containers. */
static bool
ScanValue(Scanner *s, int depth)
{
	SkipWhitespace(s);
	if (s->p >= s->end)
		return false;
	switch (*s->p)
	{
		case '{':
		case '[':
			return ScanContainer(s, depth, NULL);
		case '"':
			return ScanString(s, NULL, NULL, NULL);
		case 't':
			return ScanLiteral(s, "true");
		case 'f':
			return ScanLiteral(s, "false");
		case 'n':
			return ScanLiteral(s, "null");
		default:
			return ScanNumber(s);
	}
}

/* Convert a validated number token to int64; false if not integral or out of range. */
static bool
TokenToInt64(const char *p, const char *end, int64_t *value)
{
	bool		negative = false;
	uint64_t	acc = 0;
	uint64_t	limit;

	if (p < end && *p == '-')
	{
		negative = true;
		p++;
	}
	limit = negative ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;
	if (p >= end)
		return false;
	for (; p < end; p++)
	{
		unsigned	d;

		if (*p < '0' || *p > '9')
			return false;		/* fraction or exponent */
		d = (unsigned) (*p - '0');
		if (acc > (limit - d) / 10)
			return false;
		acc = acc * 10 + d;
	}
	if (negative)
		*value = (acc == (uint64_t) INT64_MAX + 1) ? INT64_MIN : -(int64_t) acc;
	else
		*value = (int64_t) acc;
	return true;
}

/* Validates the whole document and finds key's value among the top level's. */
static AggrJsonResult
FindTopLevel(const char *json, size_t len, Lookup *lookup)
{
	Scanner		s = {json, json + len};

	if (json == NULL)
		return AGGR_JSON_MALFORMED;
	SkipWhitespace(&s);
	if (s.p >= s.end || *s.p != '{' || !ScanContainer(&s, 0, lookup))
		return AGGR_JSON_MALFORMED;
	SkipWhitespace(&s);
	if (s.p != s.end)
		return AGGR_JSON_MALFORMED; /* trailing bytes */
	if (lookup->found == NULL)
		return AGGR_JSON_ABSENT;
	return AGGR_JSON_OK;
}

AggrJsonResult
AggrJsonGetInt(const char *json, size_t len, const char *key, int64_t *value)
{
	Lookup		lookup = {key, strlen(key), NULL, NULL};
	AggrJsonResult result = FindTopLevel(json, len, &lookup);

	if (result != AGGR_JSON_OK)
		return result;
	if (!TokenToInt64(lookup.found, lookup.found_end, value))
		return AGGR_JSON_WRONG_TYPE;
	return AGGR_JSON_OK;
}

bool
AggrJsonFieldIs(const char *json, size_t len, const char *key, const char *literal)
{
	Lookup		lookup = {key, strlen(key), NULL, NULL};

	return FindTopLevel(json, len, &lookup) == AGGR_JSON_OK &&
		(size_t) (lookup.found_end - lookup.found) == strlen(literal) &&
		memcmp(lookup.found, literal, strlen(literal)) == 0;
}

AggrJsonResult
AggrJsonGetRaw(const char *json, size_t len, const char *key,
			   const char **value, size_t *value_len)
{
	Lookup		lookup = {key, strlen(key), NULL, NULL};
	AggrJsonResult result = FindTopLevel(json, len, &lookup);

	if (result == AGGR_JSON_OK)
	{
		*value = lookup.found;
		*value_len = (size_t) (lookup.found_end - lookup.found);
	}
	return result;
}
