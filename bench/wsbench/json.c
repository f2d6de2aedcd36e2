/* Just enough JSON (RFC 8259) for the chat check: the members of a top-level object found by
 * name, as spans into the message. Values are neither unescaped nor validated. */
#include "wsbench.h"

#include <string.h>

static size_t json_ws(const uint8_t *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* The index just past the string that starts at s[i] == '"', or n + 1 when it does not end. */
static size_t json_str_end(const uint8_t *s, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n + 1;
}

bool wb_json_fields(const uint8_t *s, size_t n, struct jfield *f, int nf)
{
    size_t i = json_ws(s, 0, n);
    if (i >= n || s[i] != '{')
        return false;
    i = json_ws(s, i + 1, n);
    if (i < n && s[i] == '}')
        return true;
    while (i < n) {
        if (s[i] != '"')
            return false;
        size_t ke = json_str_end(s, i, n);
        if (ke > n)
            return false;
        const uint8_t *key = s + i + 1;
        size_t klen = ke - i - 2;
        i = json_ws(s, ke, n);
        if (i >= n || s[i] != ':')
            return false;
        i = json_ws(s, i + 1, n);
        if (i >= n)
            return false;
        size_t vs = i, ve;
        if (s[i] == '"') {
            ve = json_str_end(s, i, n);
            if (ve > n)
                return false;
        } else if (s[i] == '{' || s[i] == '[') {
            unsigned depth = 0;
            for (ve = i; ve < n; ve++) {
                if (s[ve] == '"') {
                    ve = json_str_end(s, ve, n) - 1;
                } else if (s[ve] == '{' || s[ve] == '[') {
                    depth++;
                } else if ((s[ve] == '}' || s[ve] == ']') && --depth == 0) {
                    ve++;
                    break;
                }
            }
            if (depth)
                return false;
        } else {
            for (ve = i; ve < n && s[ve] != ',' && s[ve] != '}' && s[ve] != ' '; ve++)
                ;
        }
        for (int k = 0; k < nf; k++)
            if (strlen(f[k].key) == klen && memcmp(f[k].key, key, klen) == 0) {
                bool str = s[vs] == '"';
                f[k].v = s + vs + str;
                f[k].len = ve - vs - 2 * str;
                f[k].found = true;
            }
        i = json_ws(s, ve, n);
        if (i >= n)
            return false;
        if (s[i] == '}')
            return true;
        if (s[i] != ',')
            return false;
        i = json_ws(s, i + 1, n);
    }
    return false;
}

bool wb_jeq(const struct jfield *f, const char *lit)
{
    return f->found && f->len == strlen(lit) && memcmp(f->v, lit, f->len) == 0;
}
