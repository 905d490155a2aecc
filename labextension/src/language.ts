/**
 * Highlighting for the Neural model language (neural_jupyter/dsl/grammar.lark) as a
 * CodeMirror 6 StreamLanguage, also covering the `%%neural_...` line that starts a model cell.
 *
 * Tokens use CodeMirror's standard highlight tags, so every JupyterLab theme colours them;
 * the `tok-*` classes (classHighlighter) name them in the DOM for user CSS and tests.
 */
import {
  LanguageSupport,
  StreamLanguage,
  StringStream,
  syntaxHighlighting
} from '@codemirror/language';
import { classHighlighter } from '@lezer/highlight';

export const NEURAL_MIME = 'text/x-neural';

const KEYWORDS = new Set([
  'network',
  'define',
  'input',
  'layers',
  'loss',
  'optimizer',
  'metrics',
  'train'
]);
const ATOMS = new Set(['true', 'false', 'True', 'False', 'None', 'null']);
const FUNCTIONS = new Set(['HPO', 'range', 'log_range', 'choice', 'early_stopping']);
const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?/;

interface IState {
  magicLine: boolean; // inside the `%%neural_run --data x` line
  afterDeclaration: boolean; // the next word names a network or a block
  depth: number; // parentheses, for keyword arguments
}

function tokenMagic(stream: StringStream): string | null {
  if (stream.eatSpace()) {
    return null;
  }
  if (stream.match(/^--?[A-Za-z][\w-]*/)) {
    return 'attributeName';
  }
  if (stream.match(/^"(?:[^"\\]|\\.)*"?/) || stream.match(/^'(?:[^'\\]|\\.)*'?/)) {
    return 'string';
  }
  if (stream.match(NUMBER) && (stream.eol() || /[\s,]/.test(stream.peek() || ''))) {
    return 'number';
  }
  stream.match(/^[^\s]+/);
  return 'variableName';
}

export const neuralStreamParser = {
  name: 'neural',
  startState: (): IState => ({ magicLine: false, afterDeclaration: false, depth: 0 }),
  copyState: (state: IState): IState => ({ ...state }),
  token(stream: StringStream, state: IState): string | null {
    if (stream.sol()) {
      state.magicLine = false;
      if (stream.match(/^%%?[A-Za-z_]\w*/)) {
        state.magicLine = true;
        return 'meta';
      }
    }
    if (state.magicLine) {
      return tokenMagic(stream);
    }
    if (stream.eatSpace()) {
      return null;
    }
    if (stream.match('#') || stream.match('//')) {
      stream.skipToEnd();
      return 'comment';
    }
    if (stream.match(/^"(?:[^"\\]|\\.)*"?/) || stream.match(/^'(?:[^'\\]|\\.)*'?/)) {
      return 'string';
    }
    if (stream.match(NUMBER)) {
      return 'number';
    }
    const word = stream.match(/^[A-Za-z_][A-Za-z0-9_]*/) as RegExpMatchArray | null;
    if (word) {
      const text = word[0];
      if (state.afterDeclaration) {
        state.afterDeclaration = false;
        return 'className.definition';
      }
      if (text === 'network' || text === 'define') {
        state.afterDeclaration = true;
        return 'keyword';
      }
      if (ATOMS.has(text)) {
        return 'atom';
      }
      const next = stream.string.slice(stream.pos).trimStart();
      if (next.startsWith('(')) {
        // layers and optimizers: typeName names them (tok-typeName), variableName.standard
        // gives them the theme's "builtin" colour (JupyterLab's theme has none for types)
        return FUNCTIONS.has(text) ? 'variableName.special' : 'typeName variableName.standard';
      }
      if (next.startsWith('=') && !next.startsWith('==') && state.depth > 0) {
        return 'propertyName';
      }
      if (next.startsWith(':')) {
        return KEYWORDS.has(text) ? 'keyword' : 'propertyName';
      }
      if (KEYWORDS.has(text)) {
        return 'keyword';
      }
      if (/^[A-Z]/.test(text) && next.startsWith('{')) {
        return 'typeName variableName.standard';
      }
      return 'variableName';
    }
    const char = stream.next() as string;
    if (char === '(') {
      state.depth += 1;
    } else if (char === ')') {
      state.depth = Math.max(0, state.depth - 1);
    }
    if ('()[]{}'.includes(char)) {
      return 'bracket';
    }
    if ('*=:'.includes(char)) {
      return 'operator';
    }
    return 'punctuation';
  },
  languageData: {
    commentTokens: { line: '#' },
    closeBrackets: { brackets: ['(', '[', '{', '"', "'"] }
  }
};

export const neuralLanguage = StreamLanguage.define(neuralStreamParser);

export function neuralSupport(): LanguageSupport {
  return new LanguageSupport(neuralLanguage, [syntaxHighlighting(classHighlighter)]);
}
